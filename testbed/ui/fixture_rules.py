"""The pytest plugin's rules, apart from the plugin (which nothing imports as a library):
which topology a test asks for, where its path is found, the testbed's name, and what
happens when not root."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TopologyRequest:
    """What a test asks for: the fixture's parameter, equal for equal requests, so one testbed
    serves every test of a module that asks for the same topology."""

    path: Path
    name: str | None = None

    @property
    def id(self) -> str:
        return self.name or self.path.stem


def resolve_path(arg: object, test_file: Path, rootdir: Path) -> Path:
    """The marker's path: absolute as given; relative, from the test file's folder, then the rootdir."""
    if not isinstance(arg, str | os.PathLike):
        raise pytest.UsageError(f"{test_file}: @pytest.mark.topology needs a file path, got {arg!r:.60}")
    path = Path(arg).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [test_file.parent / path, rootdir / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise pytest.UsageError(f"{test_file}: topology {arg} not found (looked in {', '.join(str(c.parent) for c in candidates)})")


def request_for(marker: pytest.Mark, test_file: Path, rootdir: Path) -> TopologyRequest:
    if not marker.args:
        raise pytest.UsageError(f"{test_file}: @pytest.mark.topology needs the topology file")
    name = marker.kwargs.get("name")
    if name is not None and not isinstance(name, str):
        raise pytest.UsageError(f"{test_file}: @pytest.mark.topology name= must be a string")
    return TopologyRequest(resolve_path(marker.args[0], test_file, rootdir), name)


def testbed_name(base: str, given: str | None, reuse: bool, pid: int) -> str:
    """The session's name for a topology: its own (given=), a fixed one (reuse) or a per-session one."""
    if given:
        return given
    prefix = "pt" if reuse else f"pt{pid % 10000}"
    return re.sub(r"[^a-z0-9-]", "", f"{prefix}-{base}")[:20]


def not_root_outcome(euid: int, env: Mapping[str, str]) -> tuple[str, str] | None:
    """None as root; else ("skip"|"fail", reason): a skip outside CI, a failure under CI."""
    if euid == 0:
        return None
    reason = "the testbed fixture needs root (libvirt's system instance, /var/lib/cxl-testbed, /dev/shm)"
    return ("fail", f"{reason}, and CI is set") if env.get("CI") else ("skip", reason)
