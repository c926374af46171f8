"""cgroup v2 groups of the sandboxes: limits, statistics, kill, recreate.

Layout: /sys/fs/cgroup/tbsandbox/ enables memory, cpu and pids for its children:
  z-ID    the sandbox init (zygote) of sandbox ID: its idle memory is this group's memory.current;
  fn-ID   the function's processes, recreated on every release (a fresh memory.peak, pids.peak, cpu.stat);
  oci-N   the crun baseline's containers.
"""

from __future__ import annotations

import errno
import os
import re
import select
import time
from dataclasses import dataclass
from pathlib import Path

from tbagent.sandbox import paths

CONTROLLERS = ("memory", "cpu", "pids")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str | int) -> int:
    """'256M' -> bytes; ints pass through."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


@dataclass(frozen=True)
class Limits:
    memory_max: int | None = 256 << 20   # bytes; None = no limit
    cpu_quota: float | None = None       # CPUs; None = no limit
    pids_max: int | None = 64
    period_us: int = 100_000

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Limits:
        mem = d.get("memory")
        cpu = d.get("cpu")
        pids = d.get("pids")
        return cls(memory_max=None if mem is None else parse_size(str(mem)),
                   cpu_quota=None if cpu is None else float(str(cpu)),
                   pids_max=None if pids is None else int(str(pids)))

    def files(self) -> dict[str, str]:
        """The interface files and values that apply these limits."""
        cpu = "max" if self.cpu_quota is None else str(max(1000, int(self.cpu_quota * self.period_us)))
        return {
            "memory.max": "max" if self.memory_max is None else str(self.memory_max),
            "cpu.max": f"{cpu} {self.period_us}",
            "pids.max": "max" if self.pids_max is None else str(self.pids_max),
        }


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def tree() -> Path:
    return paths.CGROUP_ROOT / paths.CGROUP_TREE


def ensure_tree() -> Path:
    """Create /sys/fs/cgroup/tbsandbox with memory, cpu and pids delegated to its children."""
    want = " ".join(f"+{c}" for c in CONTROLLERS)
    root = paths.CGROUP_ROOT
    have = set((root / "cgroup.subtree_control").read_text().split())
    if not set(CONTROLLERS) <= have:
        _write(root / "cgroup.subtree_control", want)
    t = tree()
    t.mkdir(exist_ok=True)
    if not set(CONTROLLERS) <= set((t / "cgroup.subtree_control").read_text().split()):
        _write(t / "cgroup.subtree_control", want)
    return t


class Group:
    """One cgroup under the sandbox tree."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = tree() / name

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self, limits: Limits | None = None) -> None:
        self.path.mkdir()
        if limits is not None:
            self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        for name, value in limits.files().items():
            path = self.path / name
            if value.startswith("max") and not path.exists():
                continue  # no limit asked, and the kernel lacks the knob (cpu.max needs CFS_BANDWIDTH)
            _write(path, value)

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def stats(self) -> dict[str, int]:
        out = {}
        for name in ("memory.current", "memory.peak", "pids.current", "pids.peak"):
            try:
                out[name] = int(self.read(name))
            except (OSError, ValueError):
                continue
        try:
            cpu = dict(line.split() for line in self.read("cpu.stat").splitlines())
            out["cpu.usage_usec"] = int(cpu["usage_usec"])
        except (OSError, KeyError, ValueError):
            pass
        return out

    def procs(self) -> list[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def populated(self) -> bool:
        return "populated 1" in self.read("cgroup.events")

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def kill(self, timeout: float = 5.0) -> None:
        """cgroup.kill (SIGKILL to every process, including ones forked meanwhile); wait until empty."""
        if not self.populated():
            return
        _write(self.path / "cgroup.kill", "1")
        self.wait_empty(timeout)

    def wait_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        fd = os.open(self.path / "cgroup.events", os.O_RDONLY)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                if b"populated 0" in os.read(fd, 4096):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"cgroup {self.name} still populated after {timeout}s")
                poller.poll(min(left, 0.05) * 1000)  # kernfs notifies on change; the cap covers a missed one
        finally:
            os.close(fd)

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass

    def recreate(self, limits: Limits) -> None:
        """A fresh group: every statistic (memory.peak, pids.peak, cpu.stat, memory.events) starts at 0."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        self.create(limits)

    def destroy(self, timeout: float = 5.0) -> None:
        if not self.exists():
            return
        self.kill(timeout)
        for _ in range(100):  # a just-emptied group can answer EBUSY for a moment
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.01)
        self.path.rmdir()


def stale_groups() -> list[Group]:
    t = tree()
    if not t.is_dir():
        return []
    return [Group(p.name) for p in sorted(t.iterdir()) if p.is_dir()]
