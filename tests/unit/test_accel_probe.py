"""The accelerator probe's verdicts, from serial output recorded from real probe boots
(tests/unit/data/probe): a TCG boot that used CXL memory with vector instructions, a KVM boot
that died on this project's machines, and a boot without a CXL window."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from testbed.artifacts.kernel import Kernel
from testbed.config.topology import Accel, KernelKind
from testbed.errors import UserError
from testbed.lifecycle import accel

DATA = Path(__file__).parent / "data" / "probe"
KERNEL = Kernel(KernelKind.DEBIAN, "6.12", Path("/cache/kernels/debian-x"))


def replay(monkeypatch: pytest.MonkeyPatch, name: str) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_run(argv: list[Any], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append([str(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0, (DATA / f"{name}.txt").read_text(), None)

    monkeypatch.setattr(accel, "run", fake_run)
    return calls


def test_cxl_used_with_vector_instructions_is_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = replay(monkeypatch, "tcg-direct-ok")
    ok, why = accel.probe(KERNEL, Path("/q"), "tcg", 60)
    assert ok and "used CXL memory with vector loads and stores" in why
    (argv,) = calls
    assert "cxl-type3,bus=probe-rp,volatile-memdev=probe-mem,id=probe-vmem,sn=1" in argv
    assert argv[argv.index("-initrd") + 1] == str(KERNEL.probe_initramfs)
    assert "cxltb.probe=cxl" in argv[argv.index("-append") + 1]


def test_a_guest_that_does_not_boot_is_a_fail_with_qemus_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    replay(monkeypatch, "kvm-no-boot")
    ok, why = accel.probe(KERNEL, Path("/q"), "kvm", 60)
    assert not ok and why.startswith("guest did not boot under kvm") and "kvm_buf_set_msrs" in why


def test_a_guest_that_boots_but_cannot_use_cxl_is_a_fail_naming_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    replay(monkeypatch, "tcg-no-window")
    ok, why = accel.probe(KERNEL, Path("/q"), "tcg", 60)
    assert not ok and why.startswith("guest booted under tcg but could not use CXL memory")
    assert "CXLTB-PROBE-CXL-FAIL create_ram_region" in why


def test_kvm_is_never_chosen_without_a_passing_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "probe_kvm", lambda emulator: (False, "guest booted under kvm but could not use CXL"))
    assert accel.resolve(Accel.AUTO, Path("/q")) is Accel.TCG
    with pytest.raises(UserError, match="could not use CXL"):
        accel.resolve(Accel.KVM, Path("/q"))
    monkeypatch.setattr(accel, "probe_kvm", lambda emulator: (True, "ok"))
    assert accel.resolve(Accel.AUTO, Path("/q")) is Accel.KVM
