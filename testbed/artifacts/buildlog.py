"""Progress for long builds: the phase, the elapsed time and how far make or ninja got (the
count of objects compiled), reported every `every` seconds instead of nothing for 20 minutes."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from testbed import hostcmd

Progress = Callable[[str, str], None]

# Kbuild's quiet lines ("  CC      mm/memory.o", "  LD [M]  fs/ext4/ext4.ko") and ninja's
# ("[123/4567] Compiling C object ..."): one per step.
KBUILD_STEP = re.compile(r"^\s+(CC|AS|LD|AR|CC \[M\]|LD \[M\])\s+(\S+)")
NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s")


def stderr_progress(phase: str, message: str) -> None:
    """The default where no progress display was passed (e.g. a kernel built inside `up`)."""
    print(f"{phase}: {message}", file=sys.stderr, flush=True)


def minutes(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s"


class BuildWatch:
    """Counts steps in a build's output and says where it is at most every `every` seconds."""

    def __init__(self, phase: str, what: str, note: Progress, every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.phase, self.what, self.note, self.every, self.clock = phase, what, note, every, clock
        self.start = clock()
        self.last = self.start
        self.steps = 0
        self.total: int | None = None
        self.current = ""

    def line(self, text: str) -> None:
        m = NINJA_STEP.match(text)
        if m:
            self.steps, self.total = int(m.group(1)), int(m.group(2))
            self.current = text[m.end():].strip()[:80]
            return
        k = KBUILD_STEP.match(text)
        if k:
            self.steps += 1
            self.current = k.group(2)[:80]

    def message(self) -> str:
        done = f"{self.steps}/{self.total} steps" if self.total else f"{self.steps} objects compiled"
        last = f" (last: {self.current})" if self.current else ""
        return f"{self.what}: {minutes(self.clock() - self.start)} elapsed, {done}{last}"

    def tick(self) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.note(self.phase, self.message())


def run_build(argv: Sequence[str | Path], phase: str, what: str, note: Progress, *, cwd: Path,
              env: dict[str, str], timeout: float, every: float = 30.0) -> float:
    """Run a build command with progress; returns its duration in seconds."""
    watch = BuildWatch(phase, what, note, every)
    note(phase, f"{what}: started")
    hostcmd.stream(argv, watch.line, env=env, cwd=cwd, timeout=timeout, tick=watch.tick)
    note(phase, f"{what}: done in {minutes(watch.clock() - watch.start)}, {watch.steps} steps")
    return watch.clock() - watch.start
