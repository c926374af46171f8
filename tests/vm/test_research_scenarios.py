"""The shipped research scenarios, reduced, with their own assertions, on one shared testbed.

Each runs through the CLI against the module's testbed (`--set testbed=` names its topology,
so the run finds it up, uses it and leaves it up). A scenario passes only if it completed, had
no failures, and every one of its assertions ran and held."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.lifecycle.testbed import Testbed
from testbed.ui import cli

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node.yaml"))

# scenario -> overrides that keep what its assertions name, with fewer invocations
REDUCED = {
    "coldstart": ["workloads.start.sweep.fn=[hello, heap, llm]", "workloads.start.arrival.count=1"],
    "dedup": ["workloads.hello.sweep.instances=[1]", "workloads.heap.sweep.instances=[4]"],
    "memory-density": ["workloads.density.sweep.instances=[32]"],
    "sandbox-reuse": ["workloads.start.sweep.fn=[hello]", "workloads.start.arrival.count=10"],
    "trace-replay": ["workloads.bursty.arrival.limit=24"],
    "serverlessllm": ["setup.put-ci.preset=tiny", "workloads.load.sweep.model=[small]",
                      "workloads.load.sweep.instances=[1, 2]", "workloads.load-writer.sweep.model=[small]",
                      "workloads.load-writer.sweep.instances=[1]"],
    "serverlessllm-migration": ["workloads.migrate.sweep.context=[32, 128]", "workloads.migrate.arrival.count=2"],
    # on this module's two nodes: node0 prefills, node1 decodes
    "mooncake": ["workloads.serve.prefill=[node0]", "workloads.serve.decode=[node1]", "setup.arenas.nodes=[node0, node1]",
                 "workloads.serve.arrival.limit=9"],
}


@pytest.mark.parametrize("name", list(REDUCED))
def test_reduced_scenario_assertions_hold(testbed: Testbed, name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    sets = [f"testbed={testbed.topology.source}", *REDUCED[name]]
    code = cli.main(["run", str(REPO / "scenarios" / f"{name}.yaml"), "--out", str(out),
                     *[a for s in sets for a in ("--set", s)]])
    summary = json.loads((out / "summary.json").read_text())
    failures = json.loads((out / "failures.json").read_text())
    assert code == 0 and summary["complete"] and not failures, (code, failures[:3])
    assertions = summary["assertions"]
    assert assertions and all(a["ok"] and a["detail"] for a in assertions), [(a["text"], a["detail"]) for a in assertions]
    # The run used the module's testbed and left it up; QEMU reported the direct path.
    meta = json.loads((out / "meta.json").read_text())
    assert meta["testbed"]["brought_up_by_run"] is False
    assert {h["observed"] for h in meta["cxl_paths"]} == {"direct"}
