"""What the emulator does to the project's research results: each chosen scenario runs once on
the patched QEMU (`path: direct`) and once on Debian's QEMU (every CXL access is MMIO), in one
invocation, and the figures are printed side by side per mode.

    python bench/emulators.py [--only trace-replay coldstart] [--set KEY=VALUE ...]

Each run uses a copy of the scenario's topology renamed emu-<scenario>-<qemu>, so a
researcher's own testbed is never touched. Results folders are kept under --out (default a
temporary folder, printed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from testbed.ui import cli

REPO = Path(__file__).resolve().parents[1]
EMULATORS = {"patched": "direct", "debian": "mmio"}  # qemu -> the MHDs' path
METRICS = ("latency_ms", "e2e_ms", "startup_ms", "first_request_ms", "pss_local_kib_per_instance")


def topology_copy(scenario: Path, qemu: str, tmp: Path) -> Path:
    data: dict[str, Any] = yaml.safe_load(scenario.read_text())
    src = scenario.parent / data["testbed"]
    topo: dict[str, Any] = yaml.safe_load(src.read_text())
    topo["name"] = f"emu-{data['name'][:8]}-{qemu[:3]}".rstrip("-")
    topo["qemu"] = qemu
    for mhd in topo.get("mhds", []):
        mhd["path"] = EMULATORS[qemu]
    out = tmp / f"{topo['name']}.yaml"
    out.write_text(yaml.safe_dump(topo, sort_keys=False))
    return out


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["trace-replay", "coldstart"], help="scenario names")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="passed to every run")
    ap.add_argument("--out", type=Path, help="keep the results folders here")
    args = ap.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="emulators-"))
    base.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    for name in args.only:
        scenario = REPO / "scenarios" / f"{name}.yaml"
        for qemu in EMULATORS:
            out = base / f"{name}-{qemu}"
            sets = [f"testbed={topology_copy(scenario, qemu, base)}", *args.sets]
            code = cli.main(["run", str(scenario), "--out", str(out), *[a for s in sets for a in ("--set", s)]])
            summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
            meta: dict[str, Any] = json.loads((out / "meta.json").read_text())
            paths = sorted({h["observed"] for h in meta.get("cxl_paths", [])})
            print(f"{name} on {qemu}: exit {code}, CXL path as QEMU reported it: {', '.join(paths)}; {out}",
                  flush=True)
            summaries[f"{name}/{qemu}"] = summary
    print(f"\nresults: {base}")
    for name in args.only:
        print(f"\n## {name}\n")
        print("| mode | workload | metric | " + " | ".join(f"{q} median / P99" for q in EMULATORS) + " |")
        print("|---|---|---|" + "---|" * len(EMULATORS))
        first = summaries[f"{name}/patched"]
        for mode, entry in first["modes"].items():
            for wl, w in entry["workloads"].items():
                for metric in METRICS:
                    if metric not in w["metrics"] or not w["metrics"][metric]["count"]:
                        continue
                    cells = []
                    for q in EMULATORS:
                        d = summaries[f"{name}/{q}"]["modes"].get(mode, {}).get("workloads", {}).get(wl, {})
                        m = d.get("metrics", {}).get(metric, {})
                        cells.append(f"{fmt(m.get('median'))} / {fmt(m.get('p99'))}")
                    print(f"| {mode} | {wl} | {metric} | " + " | ".join(cells) + " |")
        for q in EMULATORS:
            s = summaries[f"{name}/{q}"]
            print(f"\n{name} on {q}: assertions " + "; ".join(
                f"{a['text']}: {'ok' if a['ok'] else 'FAILED'}" for a in s.get("assertions", [])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
