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

from testbed.access import node as remote
from testbed.artifacts import image, kernel
from testbed.config.topology import host_facts, load
from testbed.lifecycle import names, provision
from testbed.ui.pytest_plugin import renamed_topology

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
                state, _ = provision.up(topo)
                ups.append(time.monotonic() - t0)
                # The guest's own clock: kernel start to "ready" (init done, sshd up).
                for ns in state.nodes.values():
                    with remote.guest(ns.name, provision.endpoint(names.Layout(topo.name), ns)) as g:
                        guest.append(float(g.run(["cat", "/run/cxltb/ready"]).stdout))
                t1 = time.monotonic()
                provision.down(topo.name)
                downs.append(time.monotonic() - t1)
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
