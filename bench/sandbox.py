"""Sandbox benchmark: time to a ready sandbox, repurposed from the pool against created from
scratch by crun (an OCI bundle), in one run on one node; the per-phase breakdown; the memory of an
idle pooled sandbox. Brings up its own one-node testbed (`sbxbench`) and tears it down.

    python bench/sandbox.py [--runs 200] [--oci-runs 50] [--variant-runs 15] [--function hello]

"Ready" = the function's process is running inside a sandbox that has its namespaces, cgroup,
rootfs and network (the runner's first message); the function's own initialisation (importing its
module) is printed apart. Repurposed and crun runs are interleaved in the guest.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from testbed.config.topology import host_facts, load, renamed_topology
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
NAME = "sbxbench"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f}"


def med(phases: dict[str, Any], key: str) -> float | None:
    s = phases.get(key, {})
    return s.get("median") if s.get("n") else None


def report(d: dict[str, Any]) -> None:
    rep, oci, fresh = d["repurposed"]["phases"], d["oci"]["phases"], d["fresh_pool"]["phases"]
    print(f"\nfunction: {d['function']}")
    print("\n## Time to a ready sandbox (ms)\n")
    print("| path | n | median | P99 | min | max |\n|---|---|---|---|---|---|")
    for label, s in (("repurposed from the pool", rep["ready"]), ("created by crun (OCI bundle)", oci["ready_sandbox"]),
                     ("created by the pool (fallback path)", fresh["ready"])):
        print(f"| {label} | {s['n']} | {ms(s['median'])} | {ms(s['p99'])} | {ms(s['min'])} | {ms(s['max'])} |")
    print(f"\nratio crun / repurposed: median {d['ratio']['median']:.1f}x, P99 {d['ratio']['p99']:.1f}x (target >= 20x)")

    print("\n## Per-phase breakdown (medians, ms)\n")
    bd = d["oci"].get("breakdown", {})
    print("| phase | repurposed | crun | pool, from scratch |\n|---|---|---|---|")
    rows = [("namespaces", med(rep, "namespaces"), bd.get("namespaces"), med(fresh, "create_namespaces")),
            ("cgroup", med(rep, "cgroup"), bd.get("cgroup"), (med(fresh, "create_cgroup") or 0) + (med(fresh, "cgroup") or 0)),
            ("rootfs", med(rep, "rootfs"), bd.get("rootfs"), (med(fresh, "create_rootfs") or 0) + (med(fresh, "rootfs") or 0)),
            ("network", med(rep, "network"), bd.get("network"), med(fresh, "create_network")),
            ("process start", med(rep, "process"), bd.get("process"), (med(fresh, "create_spare") or 0) + (med(fresh, "process") or 0)),
            ("runtime rest (crun create, not split)", None, bd.get("runtime_rest"), None),
            ("pick from pool", med(rep, "pick"), None, None)]
    for name, a, b, c in rows:
        print(f"| {name} | {ms(a)} | {ms(b)} | {ms(c)} |")
    print("\ncrun phases measured directly (median ms): " + ", ".join(
        f"{k} {ms(med(oci, k))}" for k in ("rootfs_outer", "bundle", "create", "network", "process")))
    print("crun create alone by variant (median ms; a phase's share = full minus the variant without it; "
          "a negative share is below the run-to-run noise): " + ", ".join(
        f"{v} {ms(s.get('median'))}" for v, s in d["oci"]["create_variants"].items()))
    print("repurposed process start, sub-steps (median ms): " + ", ".join(
        f"{k.split('.')[1]} {ms(med(rep, k))}" for k in sorted(rep) if k.startswith("process.")))
    print(f"function init (import of the handler): repurposed {ms(med(rep, 'function_init'))}, crun {ms(med(oci, 'function_init'))}")
    print(f"ready to invoke: repurposed {ms(med(rep, 'ready_function'))}, crun {ms(med(oci, 'ready_function'))}")
    rel = d["repurposed"]["release"]
    print("release (off the start path, median ms): " + ", ".join(f"{k} {ms(med(rel, k))}" for k in rel if med(rel, k) is not None)
          + f"; crun teardown {ms(d['oci']['destroy']['median'])}")

    m = d["memory"]
    per = m["per_sandbox_meminfo_delta"]
    print(f"\n## Memory per idle pooled sandbox ({m['sandboxes']} sandboxes)\n")
    print(f"- sandbox init's cgroup memory.current: {m['init_cgroup_memory_current']['median'] / 1024:.0f} KiB (median); "
          f"its spare process's cgroup: {m['spare_cgroup_memory_current']['median'] / 1024:.0f} KiB")
    print(f"- sandbox init RSS {m['init_rss']['median'] / 1024:.0f} KiB, PSS {m['init_pss']['median'] / 1024:.0f} KiB, "
          f"private {m['init_private']['median'] / 1024:.0f} KiB (shares the factory's pages copy-on-write)")
    print("- node-wide delta per sandbox: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in per.items()))
    print(f"- after use: init cgroup {d['init_memory_after_use'] / 1024:.0f} KiB")
    cg = d["cgroup_reset"]
    print(f"\nmemory.peak reset: write {ms(cg['write_reset_s']['median'])} ms (per fd on 6.12: same fd "
          f"{cg['after_write_same_fd'] >> 10} KiB, new fd {cg['after_write_new_fd'] >> 10} KiB, before "
          f"{cg['peak_before'] >> 10} KiB), recreate the leaf {ms(cg['recreate_s']['median'])} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="repurposed sandboxes")
    ap.add_argument("--oci-runs", type=int, default=50, help="crun-created sandboxes")
    ap.add_argument("--variant-runs", type=int, default=15, help="crun create per variant (phase split)")
    ap.add_argument("--memory-sandboxes", type=int, default=8)
    ap.add_argument("--function", default="hello")
    ap.add_argument("--json", type=Path, help="also save the raw figures here")
    args = ap.parse_args()
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # SSH attempts while the node boots
    with tempfile.TemporaryDirectory() as tmp:
        topo = load(renamed_topology(REPO / "testbeds" / "one-node.yaml", NAME, Path(tmp)), host_facts())
        with Testbed.up(topo) as tb:
            r = tb.node("node0").run(["tbagent", "sandbox", "bench", "--function", args.function, "--runs",
                                      str(args.runs), "--oci-runs", str(args.oci_runs), "--variant-runs",
                                      str(args.variant_runs), "--memory-sandboxes", str(args.memory_sandboxes)],
                                     timeout=3600)
    data = json.loads(r.stdout)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    report(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
