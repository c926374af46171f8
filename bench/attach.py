"""mm-template attach against copying, in one run on one mm-template node under TCG.

Attaches a template of 64 MiB, 256 MiB and 1 GiB (pre-populated and lazy) and copies the
same bytes into anonymous memory; prints medians, the copy/attach ratios and how each grows
with size (µs per MiB between the smallest and largest size).

    python bench/attach.py [--reps 5] [--sizes 64 256 1024]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from testbed.access.node import HostNode
from testbed.config.topology import host_facts, load
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
SELFTESTS = REPO / "kernel-patches" / "selftests"
LINE = re.compile(r"method=(\w+) size_mib=(\d+) rep=\d+ ready_us=(\d+) read_all_us=(\d+)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    args = ap.parse_args()
    HostNode().run(["make", "-s", "-C", str(SELFTESTS)], stream=True)
    mhd_mib = max(1024, -(-max(args.sizes) // 256) * 256 + 256)
    spec = {"name": "bench-attach", "kernel": "mm-template",
            "nodes": [{"name": "node0", "vcpus": 1, "memory": f"{max(args.sizes) * 2 + 1024}MiB"}],
            "mhds": [{"name": "mhd0", "size": f"{mhd_mib}MiB", "window": f"{max(4096, mhd_mib * 2)}MiB"}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-attach.yaml"
        path.write_text(yaml.safe_dump(spec))
        topo = load(path, host_facts())
        with Testbed.up(topo) as tb:
            state = tb.state
            g = tb.node("node0")
            g.put(SELFTESTS / "mmt_bench", "/usr/local/bin/mmt_bench")
            g.run(["chmod", "755", "/usr/local/bin/mmt_bench"])
            dax = g.run(["readlink", "-f", "/dev/mhd/mhd0"]).stdout.strip()
            out = ""
            for size in args.sizes:
                out += g.run(["mmt_bench", "-d", dax, "-s", str(size), "-r", str(args.reps)], timeout=3600).stdout
    ready: dict[tuple[str, int], list[int]] = defaultdict(list)
    full: dict[tuple[str, int], list[int]] = defaultdict(list)
    for m in LINE.finditer(out):
        key = (m.group(1), int(m.group(2)))
        ready[key].append(int(m.group(3)))
        full[key].append(int(m.group(4)))
    print(f"kernel {state.kernel['release']} ({state.accel}), {args.reps} repetitions, medians in ms")
    print("| size MiB | method | ready (ms) | ready + read every page (ms) | copy/method ready | copy/method read-all |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        c_ready, c_full = statistics.median(ready[("copy", size)]), statistics.median(full[("copy", size)])
        for method in ("populate", "lazy", "copy"):
            r, f = statistics.median(ready[(method, size)]), statistics.median(full[(method, size)])
            print(f"| {size} | {method} | {r / 1000:.2f} | {f / 1000:.2f} | {c_ready / max(r, 1):.1f}x | {c_full / max(f, 1):.1f}x |")
    lo, hi = min(args.sizes), max(args.sizes)
    for method in ("populate", "lazy", "copy"):
        slope = (statistics.median(ready[(method, hi)]) - statistics.median(ready[(method, lo)])) / (hi - lo)
        print(f"growth {method}: {slope:.1f} us per MiB of template (ready), {lo}->{hi} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
