"""Long builds say where they are: phase, elapsed time and the count of objects compiled."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from testbed import hostcmd
from testbed.artifacts import buildlog
from testbed.errors import CommandError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_kbuild_lines_are_counted_and_reported_periodically() -> None:
    notes: list[tuple[str, str]] = []
    clock = Clock()
    watch = buildlog.BuildWatch("kernel", "building", lambda p, m: notes.append((p, m)), every=30, clock=clock)
    for line in ["  CC      mm/memory.o", "  SYNC    include/config", "  CC [M]  fs/ext4/inode.o", "  LD      vmlinux.o",
                 "warning: something"]:
        watch.line(line)
    watch.tick()
    assert notes == []  # not yet 30 s
    clock.now += 95
    watch.tick()
    assert notes == [("kernel", "building: 1m35s elapsed, 3 objects compiled (last: vmlinux.o)")]
    watch.tick()
    assert len(notes) == 1  # once per period, not once per tick


def test_ninja_lines_give_a_fraction() -> None:
    clock = Clock()
    watch = buildlog.BuildWatch("qemu", "building", lambda p, m: None, clock=clock)
    watch.line("[17/2345] Compiling C object libqemu.a.p/hw_cxl_cxl-device.c.o")
    watch.line("[18/2345] Linking target qemu-system-x86_64")
    assert "18/2345 steps" in watch.message() and "Linking target" in watch.message()


def test_stream_hands_over_lines_as_they_come_and_ticks() -> None:
    lines: list[str] = []
    ticks: list[int] = []
    code = "import sys,time\nprint('  CC a.o', flush=True)\ntime.sleep(1.5)\nsys.stdout.write('  CC b.o')"
    hostcmd.stream([sys.executable, "-c", code], lines.append, tick=lambda: ticks.append(1))
    assert lines == ["  CC a.o", "  CC b.o"] and ticks


def test_stream_failure_carries_the_tail_and_the_exit_code() -> None:
    with pytest.raises(CommandError) as info:
        hostcmd.stream([sys.executable, "-c", "print('error: no rule'); raise SystemExit(2)"], lambda _l: None)
    assert info.value.returncode == 2 and "error: no rule" in info.value.output


def test_stream_timeout_kills_a_silent_command() -> None:
    with pytest.raises(CommandError, match="timed out"):
        hostcmd.stream([sys.executable, "-c", "import time; time.sleep(30)"], lambda _l: None, timeout=1.0)


def test_run_build_reports_start_progress_and_end(tmp_path: Path) -> None:
    notes: list[str] = []
    script = "import time\nfor i in range(3):\n    print(f'  CC f{i}.o', flush=True)\n    time.sleep(0.6)\n"
    buildlog.run_build([sys.executable, "-c", script], "kernel", "building", lambda _p, m: notes.append(m),
                       cwd=tmp_path, env={}, timeout=60, every=0.5)
    assert notes[0] == "building: started" and notes[-1].startswith("building: done in 0m0")
    assert any("objects compiled" in n for n in notes[1:-1]) and notes[-1].endswith("3 steps")
