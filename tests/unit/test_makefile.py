"""The Makefile's dependency graph on a fresh machine: host packages come before the venv,
whose libvirt-python builds against libvirt-dev, and the emulator is built before `demo` and
`test` use it. `make -n -B` prints every recipe as if nothing existed yet."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dry_run(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    p = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True)
    return p.stdout.splitlines()


def first(lines: list[str], fragment: str, start: bool = False) -> int:
    return next(i for i, ln in enumerate(lines) if (ln.startswith(fragment) if start else fragment in ln))


@pytest.mark.parametrize("target", ["demo", "test", "venv"])
def test_host_packages_come_before_the_venv(target: str) -> None:
    lines = dry_run(target)
    # Unconditionally: a guard such as `[ -x /usr/bin/pkg-config ] ||` skipped it on machines
    # that had pkg-config but not libvirt-dev.
    assert first(lines, "./scripts/install-host-deps", start=True) < first(lines, "-m venv") < first(lines, "pip install")


@pytest.mark.parametrize("target", ["demo", "test"])
def test_the_patched_qemu_is_built_before_it_is_used(target: str) -> None:
    lines = dry_run(target)
    use = "testbed demo" if target == "demo" else "pytest tests"
    assert first(lines, "testbed qemu build") < first(lines, use)


@pytest.mark.parametrize("target", ["demo", "test", "test-vm"])
def test_the_explicit_host_setup_runs_before_any_testbed(target: str) -> None:
    lines = dry_run(target)
    use = {"demo": "testbed demo", "test": "pytest tests", "test-vm": "pytest -q tests/vm"}[target]
    assert first(lines, "-m venv") < first(lines, "testbed setup") < first(lines, use)
