"""CXL memory benchmark: in one run, inside guests, the same measurements on
  stock   Debian's QEMU 10.0.2 (every CXL access is MMIO),
  mmio    the patched QEMU with `path: mmio` (the same MMIO path, same binary as direct),
  direct  the patched QEMU with `path: direct` (the window maps the device's memory),
  local   local anonymous DRAM of the direct guest.

    python bench/cxlmem.py [--bytes 256MiB] [--mmio-bytes 32MiB] [--reps 5] [--out FILE]

Per configuration: sequential 8-byte read and write bandwidth (MB/s) and dependent-load
latency (a pointer chase over a random cycle of 64-byte lines covering --bytes, ns per load).
Medians and P99s over --reps repetitions; the first pass of each target is a warm-up (it
faults the mapping in) and is not counted. Each configuration is a fresh one-node testbed
with one 512 MiB MHD, brought up and torn down here. The MMIO paths read and write fewer
bytes (--mmio-bytes) because they run at a few MB/s; bandwidth does not depend on the size.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.access.node import Node
from testbed.config.topology import host_facts, load
from testbed.config.yamlfile import Size
from testbed.lifecycle.testbed import Testbed

CONFIGS = {  # name -> (qemu, path)
    "stock": ("debian", "mmio"),
    "mmio": ("patched", "mmio"),
    "direct": ("patched", "direct"),
}
TOPOLOGY = """name: {name}
kernel: mm-template
qemu: {qemu}
nodes: {{count: 1, vcpus: 1, memory: 1GiB}}
mhds:
  - {{name: mhd0, size: 512MiB, path: {path}}}
"""
CXL = "/dev/mhd/mhd0"
CHASE_STEPS = {"direct": 2_000_000, "local": 2_000_000, "mmio": 200_000, "stock": 200_000}


@dataclass(frozen=True)
class Stats:
    median: float
    p99: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> Stats:
        a = np.asarray(xs, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 99)), len(xs))


def cxlmem(node: Node, *args: str) -> list[dict[str, Any]]:
    out = node.run(["cxlmem", *args], timeout=3600).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()]


def measure(node: Node, target: str, nbytes: int, reps: int, steps: int) -> dict[str, Stats]:
    res: dict[str, Stats] = {}
    for op, key in (("read", "mbps"), ("write", "mbps")):
        recs = cxlmem(node, op, target, str(nbytes), str(reps + 1))[1:]  # rep 0 faults the mapping in
        res[op] = Stats.of([r[key] for r in recs])
    recs = cxlmem(node, "chase", target, str(nbytes if target == "anon" else max(nbytes, 256 << 20)), str(steps),
                  str(reps + 1), "7")[1:]
    res["chase_ns"] = Stats.of([r["ns"] for r in recs])
    return res


def run_config(tmp: Path, cfg: str, args: argparse.Namespace) -> dict[str, dict[str, Stats]]:
    qemu, path = CONFIGS[cfg]
    name = f"cxlmem-{cfg}"
    f = tmp / f"{name}.yaml"
    f.write_text(TOPOLOGY.format(name=name, qemu=qemu, path=path))
    topo = load(f, host_facts())
    with Testbed.up(topo) as tb:
        node = tb.node("node0")
        nbytes = args.bytes if path == "direct" else args.mmio_bytes
        out = {cfg: measure(node, CXL, nbytes, args.reps, CHASE_STEPS[cfg])}
        if cfg == "direct":
            out["local"] = measure(node, "anon", args.bytes, args.reps, CHASE_STEPS["local"])
        return out


def report(res: dict[str, dict[str, Stats]]) -> str:
    lines = [f"{'config':8} {'read MB/s':>16} {'write MB/s':>16} {'chase ns/load':>20}",
             f"{'':8} {'median (p99)':>16} {'median (p99)':>16} {'median (p99)':>20}"]
    for cfg, m in res.items():
        lines.append(f"{cfg:8} {m['read'].median:9.1f} ({m['read'].p99:6.0f}) {m['write'].median:9.1f} "
                     f"({m['write'].p99:6.0f}) {m['chase_ns'].median:12.1f} ({m['chase_ns'].p99:6.0f})")
    lines.append("")

    def ratio(a: str, b: str, key: str) -> str:
        if a not in res or b not in res:
            return "n/a"
        return f"{res[a][key].median / res[b][key].median:.2f}"

    lines.append(f"read bandwidth   direct/stock {ratio('direct', 'stock', 'read')}x (target >= 100)   "
                 f"direct/mmio {ratio('direct', 'mmio', 'read')}x   direct/local {ratio('direct', 'local', 'read')} "
                 "(target >= 0.5)")
    lines.append(f"write bandwidth  direct/stock {ratio('direct', 'stock', 'write')}x   "
                 f"direct/local {ratio('direct', 'local', 'write')}")
    lines.append(f"load latency     stock/local {ratio('stock', 'local', 'chase_ns')}x   "
                 f"direct/local {ratio('direct', 'local', 'chase_ns')}x   (real CXL: about 2x)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=Size.parse, default=Size.parse("256MiB"))
    ap.add_argument("--mmio-bytes", type=Size.parse, default=Size.parse("32MiB"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # boot-time SSH retries are expected
    res: dict[str, dict[str, Stats]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.configs.split(","):
            if cfg not in CONFIGS:
                ap.error(f"--configs: unknown {cfg!r} (known: {', '.join(CONFIGS)})")
            res.update(run_config(Path(tmp), cfg, args))
            print(f"{cfg}: done", flush=True)
    text = report(res)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({c: {k: vars(s) for k, s in m.items()} for c, m in res.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
