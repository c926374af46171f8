"""Bring-up benchmark: wall time from `up` to every node SSH-ready (image and kernel cached),
and of `down`, for 1, 2 and 4 nodes; medians over several runs.

    python bench/bringup.py [--runs 3] [--nodes 1 2 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testbed.artifacts import image, kernel
from testbed.config.topology import host_facts, load, renamed_topology
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
FILES = {1: "one-node.yaml", 2: "two-node.yaml", 4: "four-node.yaml"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], choices=sorted(FILES))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nodes:
            topo = load(renamed_topology(REPO / "testbeds" / FILES[n], f"bench-{n}", Path(tmp)), host_facts())
            kernel.resolve(topo.kernel)  # warm the caches: the benchmark measures bring-up only
            image.build(topo.image)
            ups, downs, guest = [], [], []
            for _ in range(args.runs):
                t0 = time.monotonic()
                with Testbed.up(topo) as tb:
                    ups.append(time.monotonic() - t0)
                    if not tb.created:
                        raise SystemExit(f"testbed {topo.name} was already up: `testbed down {topo.name}` first")
                    # The guest's own clock: kernel start to "ready" (init done, sshd up).
                    for node in tb.nodes:
                        guest.append(float(node.run(["cat", "/run/cxltb/ready"]).stdout))
                assert tb.down_seconds is not None  # created, so torn down on leaving
                downs.append(tb.down_seconds)
            rows.append((n, ups, downs, guest))
            print(f"nodes={n} runs={args.runs} up_median_s={statistics.median(ups):.2f} "
                  f"guest_kernel_to_ready_median_s={statistics.median(guest):.2f} "
                  f"up_min_s={min(ups):.2f} up_max_s={max(ups):.2f} down_median_s={statistics.median(downs):.2f} "
                  f"down_max_s={max(downs):.2f}", flush=True)
    print("\n| nodes | up median (s) | up min-max (s) | down median (s) | guest kernel-to-ready median (s) |")
    print("|---|---|---|---|---|")
    for n, ups, downs, guest in rows:
        print(f"| {n} | {statistics.median(ups):.2f} | {min(ups):.2f}-{max(ups):.2f} | {statistics.median(downs):.2f} "
              f"| {statistics.median(guest):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
