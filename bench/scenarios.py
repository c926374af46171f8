"""Scenario benchmark: the wall time of each shipped scenario (scenarios/*.yaml) on this
machine, bring-up and teardown included, and the executor's own overhead per invocation.

    python bench/scenarios.py [--runs 1] [--only smoke]

Each scenario runs on a copy of its testbed renamed bsc-<scenario>, so a researcher's own
testbed is never touched. Overhead per invocation, medians over all invocations:
  dispatch   host-side executor time outside the remote call (scheduling, placeholders,
             result parsing, the raw record)
  transport  the remote call's wall time minus the time the node measured around the
             function (SSH channel, `sh` and process start on the node)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from testbed.config.topology import renamed_topology
from testbed.ui import cli

REPO = Path(__file__).resolve().parents[1]


def overrides(scenario: Path, tmp: Path) -> list[str]:
    data: dict[str, Any] = yaml.safe_load(scenario.read_text())
    name = f"bsc-{data['name']}"[:20].rstrip("-")
    tb = data.get("testbed")
    if isinstance(tb, str):
        src = Path(tb) if Path(tb).is_absolute() else scenario.parent / tb
        return [f"testbed={renamed_topology(src, name, tmp)}"]
    return [f"testbed.name={name}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", nargs="+", help="scenario names (default: every scenarios/*.yaml)")
    args = ap.parse_args()
    files = sorted((REPO / "scenarios").glob("*.yaml"))
    if args.only:
        files = [f for f in files if f.stem in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            walls, dispatch, transport, invocations = [], [], [], []
            for i in range(args.runs):
                out = Path(tmp) / f"{f.stem}-{i}"
                t0 = time.monotonic()
                sets = [arg for o in overrides(f, Path(tmp)) for arg in ("--set", o)]
                code = cli.main(["run", str(f), "--out", str(out), *sets])
                walls.append(time.monotonic() - t0)
                summary = json.loads((out / "summary.json").read_text())
                if code != 0:
                    print(f"{f.stem}: run {i + 1} failed (exit {code}); see {out}", flush=True)
                    return code
                ex = summary["executor"]
                dispatch.append(ex["dispatch_ms_median"])
                transport.append(ex["transport_ms_median"])
                invocations.append(ex["invocations"])
            rows.append((f.stem, walls, dispatch, transport, invocations))
            print(f"scenario={f.stem} runs={args.runs} wall_median_s={statistics.median(walls):.1f} "
                  f"invocations={invocations[0]} dispatch_ms_median={statistics.median(dispatch):.3f} "
                  f"transport_ms_median={statistics.median(transport):.1f}", flush=True)
    print("\n| scenario | wall (s), up and down included | invocations | executor dispatch per invocation (ms) "
          "| transport per invocation (ms) |")
    print("|---|---|---|---|---|")
    for name, walls, dispatch, transport, invocations in rows:
        print(f"| {name} | {statistics.median(walls):.1f} | {invocations[0]} | {statistics.median(dispatch):.3f} "
              f"| {statistics.median(transport):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
