"""bench/soak.py, reduced: 10 up/down cycles of the 2-node testbed, 3 of them interrupted
(Ctrl-C, SIGTERM and SIGKILL of the CLI followed by `down`). After every cycle nothing of the
testbed may be left on the host, and no command may print a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_soak_ten_cycles_three_interrupted_leave_nothing() -> None:
    name = f"sk{os.getpid() % 10000}-soak"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--cycles", "10", "--interrupted", "3",
                        "--seed", "2", "--name", name], cwd=REPO, capture_output=True, text=True, timeout=1800,
                       check=False)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0 and lines, p.stdout[-3000:] + p.stderr[-3000:]
    assert lines[-1].startswith("10 cycles (3 interrupted: sigint 1, sigterm 1, kill-cli 1, kill-qemu 0)"), lines[-1]
    assert lines[-1].endswith("cycles leaving objects behind: 0; objects left in all: 0; cycles with a traceback: 0")
    assert sum(1 for ln in lines if ln.startswith("cycle ")) == 10
