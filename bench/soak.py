"""Soak: up/down cycles of the 2-node testbed, some interrupted at a random point, counting what
each cycle leaves behind on the host (domains, networks, shm files, state folders, bridge
interfaces, QEMU processes, overlays). Target: 0 after every cycle.

    python bench/soak.py [--cycles 100] [--interrupted 20] [--seed 1] [--name soak]

Interruptions, in turn: SIGINT of the CLI (Ctrl-C), SIGTERM of the CLI, SIGKILL of the CLI
followed by `testbed down`, SIGKILL of one QEMU followed by `testbed down`. SIGINT and SIGTERM
must roll back by themselves: their leftovers are counted before any `down`. The point of
interruption is uniform over the time a clean `up` took in the first cycle. A command that
prints a traceback counts as a failure too (errors must be one line). Exit code 1 if any cycle
left anything behind or printed a traceback.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from testbed.lifecycle import leaks, names

REPO = Path(__file__).resolve().parents[1]
NAME = "soak"  # --name replaces it
KINDS = ("sigint", "sigterm", "kill-cli", "kill-qemu")
CLI = [sys.executable, "-m", "testbed"]


def leftover_count() -> tuple[int, dict[str, list[str]]]:
    left = leaks.leftovers(NAME)
    return sum(len(v) for v in left.values()), {k: v for k, v in left.items() if v}


def testbed(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def qemu_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", f"guest={names.domain_prefix(NAME)}"], capture_output=True, text=True,
                         check=False).stdout.split()
    return int(out[0]) if out else None


def interrupted_cycle(topo: Path, kind: str, delay: float) -> tuple[int, str, bool]:
    """(leftovers counted when the interrupted command is done, its last line, a traceback?)"""
    p = subprocess.Popen([*CLI, "up", "-f", str(topo)], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    if kind == "kill-qemu":
        deadline = time.monotonic() + 120
        while (pid := qemu_pid()) is None and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    elif p.poll() is None:
        os.kill(p.pid, {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "kill-cli": signal.SIGKILL}[kind])
    _, err = p.communicate(timeout=900)
    last = (err.strip().splitlines() or [""])[-1][:160]
    tb = "Traceback" in err
    if kind in ("kill-cli", "kill-qemu"):
        d = testbed("down", NAME)
        tb = tb or "Traceback" in d.stderr
    n, _ = leftover_count()
    return n, last, tb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--interrupted", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", default=NAME, help="testbed name (a copy of testbeds/two-node.yaml)")
    args = ap.parse_args()
    globals()["NAME"] = args.name
    if not 0 <= args.interrupted <= args.cycles - 1:
        ap.error("--interrupted must be between 0 and --cycles - 1 (the first cycle times a clean up)")
    rng = random.Random(args.seed)
    which = set(rng.sample(range(1, args.cycles), args.interrupted))
    rows: list[tuple[int, str, float, int, str, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = yaml.safe_load((REPO / "testbeds" / "two-node.yaml").read_text())
        data["name"] = NAME
        topo = Path(tmp) / f"{NAME}.yaml"
        topo.write_text(yaml.safe_dump(data, sort_keys=False))
        up_s = 0.0
        k = 0
        for i in range(args.cycles):
            t0 = time.monotonic()
            if i in which:
                kind = KINDS[k % len(KINDS)]
                k += 1
                delay = rng.uniform(0.2, max(up_s, 1.0))
                n, last, tb = interrupted_cycle(topo, kind, delay)
            else:
                kind, delay = "clean", 0.0
                r = testbed("up", "-f", str(topo))
                if i == 0:
                    up_s = time.monotonic() - t0
                last = (r.stderr.strip().splitlines() or [""])[-1][:160] if r.returncode else "up ok"
                d = testbed("down", NAME)
                tb = "Traceback" in r.stderr or "Traceback" in d.stderr
                n, _ = leftover_count()
            rows.append((i, kind, delay, n, last, tb))
            print(f"cycle {i:3d} {kind:9s} at {delay:5.1f}s: {n} left over ({time.monotonic() - t0:.0f}s)"
                  f"{' TRACEBACK' if tb else ''} {last}",
                  flush=True)
            if n:
                _, detail = leftover_count()
                print(f"  left: {detail}", flush=True)
                testbed("down", NAME)  # start the next cycle clean, but the count stands
    leaked = [r for r in rows if r[3]]
    tracebacks = [r for r in rows if r[5]]
    print(f"\n{len(rows)} cycles ({args.interrupted} interrupted: "
          + ", ".join(f"{kd} {sum(1 for r in rows if r[1] == kd)}" for kd in KINDS)
          + f"); cycles leaving objects behind: {len(leaked)}; objects left in all: {sum(r[3] for r in rows)}; "
          f"cycles with a traceback: {len(tracebacks)}")
    return 1 if leaked or tracebacks else 0


if __name__ == "__main__":
    raise SystemExit(main())
