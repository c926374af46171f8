"""Restore benchmark: for each workload and mode, startup latency (median, P99) and local memory
per instance at 1, 4 and 16 instances alive, in one run. Snapshots are taken on node0 into the
shared CXL store and restored on node1. Brings up its own testbed (`rstbench`, from
testbeds/two-node-large.yaml) and tears it down; with --qemu patched,debian it does the whole
run once on each emulator (the patched QEMU's direct CXL path, then Debian's MMIO-only QEMU)
and prints them side by side.

    python bench/restore.py [--counts 1,4,16] [--workloads hello,...,heap] [--heap-mib 256]
                            [--sandbox-workloads hello,heap] [--sandbox-runs 20]
                            [--qemu patched,debian]

startup = request received by the agent -> instance ready (answers a ping: for restores that is
after `criu restore` returned and the process runs; for cold, after the function's
initialisation). The request each instance then answers touches a small part of the function's
memory (the heap function reads `--touch-pct` of its pages), as a short invocation would; the
local memory per instance is the node's used memory (MemTotal - MemAvailable) growth over all
instances alive, divided by their number.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from testbed.access.node import Node
from testbed.config.topology import host_facts, load
from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[1]
NAME = "rstbench"
MODES = ("cold", "criu", "lazy", "template")
EVENTS: dict[str, dict[str, Any]] = {
    "hello": {"name": "bench"},
    "jsonrt": {"items": 200},
    "imgresize": {"w": 160, "h": 120},
    "matmul": {"n": 64},
    "inference": {"batch": 8},
    "compress": {"kib": 256},
    "heap": {"touch_pct": 1, "write_ratio": 0.5, "seed": 1},
}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def run_json(node: Node, argv: list[str]) -> list[dict[str, Any]]:
    r = node.run(argv, timeout=7200)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def measure(node: Node, fn: str, counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        per: dict[str, Any] = {"startup_ms": [], "first_request_ms": [], "e2e_ms": [], "counts": {}}
        for n in counts:
            recs = run_json(node, ["tbagent", "snap", "run", fn, "--mode", mode, "--count", str(n),
                                   "--event", json.dumps(EVENTS[fn])])
            inst, summary = recs[:-1], recs[-1]
            bad = [r for r in inst if not r["ok"]]
            if bad:
                raise SystemExit(f"{fn} {mode}: {bad[0]['error']}")
            starts = [r["startup_ms"] for r in inst]
            per["startup_ms"] += starts
            per["first_request_ms"] += [r["first_request_ms"] for r in inst]
            per["e2e_ms"] += [r["e2e_ms"] for r in inst]
            per["counts"][n] = {"startup_median_ms": statistics.median(starts),
                                "first_request_median_ms": statistics.median(r["first_request_ms"] for r in inst),
                                "local_kib_per_instance": summary["local_kib_per_instance"],
                                "pss_local_kib_per_instance": summary["pss_local_kib"] / n,
                                "rss_cxl_kib_per_instance": summary["rss_cxl_kib"] / n}
        for key in ("startup", "first_request", "e2e"):
            per[f"{key}_median_ms"] = statistics.median(per[f"{key}_ms"])
            per[f"{key}_p99_ms"] = pct(per[f"{key}_ms"], 99)
        out[mode] = per
    return out


def measure_sandboxed(node: Node, fn: str, runs: int) -> dict[str, Any]:
    """TrEnv's full path (template restore into a repurposed sandbox) against CRIU restores into
    sandboxes made for them, one instance at a time."""
    out: dict[str, Any] = {}
    for mode, placement in (("template", "pool"), ("criu", "fresh")):
        starts, e2e = [], []
        for _ in range(runs):
            rec = run_json(node, ["tbagent", "snap", "run", fn, "--mode", mode, "--sandbox", placement,
                                  "--event", json.dumps(EVENTS[fn])])[0]
            if not rec["ok"]:
                raise SystemExit(f"{fn} {mode} in a {placement} sandbox: {rec['error']}")
            starts.append(rec["startup_ms"])
            e2e.append(rec["e2e_ms"])
        out[f"{mode}+{placement}"] = {"n": runs, "startup_median_ms": statistics.median(starts),
                                      "startup_p99_ms": pct(starts, 99), "e2e_median_ms": statistics.median(e2e),
                                      "e2e_p99_ms": pct(e2e, 99)}
    return out


def report(data: dict[str, Any], counts: list[int]) -> None:
    top = str(max(counts))
    print("\nlocal = the instances' PSS in local DRAM per instance (smaps; CXL pages excluded); "
          "node = growth of the node's used memory over all instances alive, per instance (noisy at small n)")
    print("\n| workload | mode | n | startup median (ms) | startup P99 (ms) | "
          + " | ".join(f"local MiB @{n}" for n in counts) + f" | node MiB @{top} |")
    print("|---|---|---|---|---|" + "---|" * (len(counts) + 1))
    for fn, modes in data["workloads"].items():
        for mode, d in modes.items():
            mem = " | ".join(f"{d['counts'][str(n)]['pss_local_kib_per_instance'] / 1024:.1f}" for n in counts)
            node = d["counts"][top]["local_kib_per_instance"] / 1024
            print(f"| {fn} | {mode} | {len(d['startup_ms'])} | {d['startup_median_ms']:.1f} | {d['startup_p99_ms']:.1f} "
                  f"| {mem} | {node:.1f} |")
    print(f"\n| workload | P99 criu/template | P99 lazy/template | local memory saved vs criu @{top} (PSS) | (node) |")
    print("|---|---|---|---|---|")
    for fn, m in data["workloads"].items():
        t, c, lz = m["template"], m["criu"], m["lazy"]
        saved = 1 - t["counts"][top]["pss_local_kib_per_instance"] / c["counts"][top]["pss_local_kib_per_instance"]
        node = 1 - t["counts"][top]["local_kib_per_instance"] / c["counts"][top]["local_kib_per_instance"]
        print(f"| {fn} | {c['startup_p99_ms'] / t['startup_p99_ms']:.2f}x | {lz['startup_p99_ms'] / t['startup_p99_ms']:.2f}x "
              f"| {saved:.0%} | {node:.0%} |")
    if data.get("sandboxed"):
        print("\n| workload | path | n | startup median (ms) | startup P99 (ms) | e2e median (ms) | e2e P99 (ms) |")
        print("|---|---|---|---|---|---|---|")
        for fn, paths in data["sandboxed"].items():
            for name, d in paths.items():
                print(f"| {fn} | {name} | {d['n']} | {d['startup_median_ms']:.1f} | {d['startup_p99_ms']:.1f} "
                      f"| {d['e2e_median_ms']:.1f} | {d['e2e_p99_ms']:.1f} |")


def topology_file(tmp: Path, qemu: str) -> Path:
    """two-node-large under this bench's name, on the given emulator (Debian's has only MMIO)."""
    data: dict[str, Any] = yaml.safe_load((REPO / "testbeds" / "two-node-large.yaml").read_text())
    data["name"] = f"{NAME}-{qemu[:3]}"
    data["qemu"] = qemu
    for mhd in data["mhds"]:
        mhd["path"] = "direct" if qemu == "patched" else "mmio"
    out = tmp / f"{data['name']}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_one(qemu: str, args: argparse.Namespace, counts: list[int], tmp: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"heap_mib": args.heap_mib, "counts": counts, "workloads": {}}
    topo = load(topology_file(tmp, qemu), host_facts())
    with Testbed.up(topo) as tb:
        data["qemu"] = dict(tb.state.qemu)
        n0, n1 = tb.node("node0"), tb.node("node1")
        n0.run(["tbagent", "store", "format", "mhd0"])
        for fn in args.workloads.split(","):
            argv = ["tbagent", "snap", "take", fn, fn, "--warm", json.dumps(EVENTS[fn])]
            if fn == "heap":
                argv += ["--env", f"HEAP_MIB={args.heap_mib}"]
            data.setdefault("snapshots", {})[fn] = run_json(n0, argv)[0]
            data["workloads"][fn] = measure(n1, fn, counts)
            data["workloads"][fn] = json.loads(json.dumps(data["workloads"][fn]))  # int keys -> str
            print(f"{qemu}: {fn}: done", flush=True)
        sbx = [w for w in args.sandbox_workloads.split(",") if w]
        if sbx:
            n1.run(["tbagent", "sandbox", "pool", "--size", "1", "--max", "4"])
            data["sandboxed"] = {fn: measure_sandboxed(n1, fn, args.sandbox_runs) for fn in sbx}
            n1.run(["tbagent", "sandbox", "stop"])
    return data


def compare(runs: dict[str, dict[str, Any]]) -> None:
    """The emulators side by side: P99 startup, first request and end to end per mode."""
    if len(runs) < 2:
        return
    kinds = list(runs)
    print("\n| workload | mode | " + " | ".join(f"{q} P99 startup / first request / e2e (ms)" for q in kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    first = runs[kinds[0]]
    for fn, modes in first["workloads"].items():
        for mode in modes:
            cells = []
            for q in kinds:
                d = runs[q]["workloads"][fn][mode]
                cells.append(f"{d['startup_p99_ms']:.0f} / {d['first_request_p99_ms']:.0f} / {d['e2e_p99_ms']:.0f}")
            print(f"| {fn} | {mode} | " + " | ".join(cells) + " |")
    print("\ne2e P99 template/criu (below 1: TrEnv's path is faster): " + ", ".join(
        f"{q} {fn} {r['workloads'][fn]['template']['e2e_p99_ms'] / r['workloads'][fn]['criu']['e2e_p99_ms']:.2f}"
        for q, r in runs.items() for fn in r["workloads"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1,4,16")
    ap.add_argument("--workloads", default=",".join(EVENTS))
    ap.add_argument("--heap-mib", type=int, default=256)
    ap.add_argument("--touch-pct", type=float, default=1.0, help="heap pages each request reads")
    ap.add_argument("--sandbox-workloads", default="hello,heap", help="also measured inside sandboxes ('' for none)")
    ap.add_argument("--sandbox-runs", type=int, default=20)
    ap.add_argument("--qemu", default="patched", help="emulators to run on, in order: patched,debian")
    ap.add_argument("--json", type=Path, help="also save the raw figures here")
    ap.add_argument("--report", type=Path, metavar="JSON", help="print the tables of an earlier run's --json file")
    args = ap.parse_args()
    if args.report:
        old = json.loads(args.report.read_text())
        for q, r in old["runs"].items():
            print(f"\n## {q}")
            report(r, r["counts"])
        compare(old["runs"])
        return 0
    counts = [int(c) for c in args.counts.split(",")]
    kinds = args.qemu.split(",")
    if not set(kinds) <= {"patched", "debian"}:
        ap.error(f"--qemu: {args.qemu!r}: use patched, debian or both")
    EVENTS["heap"]["touch_pct"] = args.touch_pct
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for q in kinds:
            runs[q] = run_one(q, args, counts, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs}, indent=1))
    for q, r in runs.items():
        print(f"\n## {q} ({r['qemu'].get('version', '?')})")
        report(r, counts)
    compare(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
