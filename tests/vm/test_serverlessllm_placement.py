"""ServerlessLLM's placement question, reduced, on its own testbed: two-node-ssd, whose nodes'
disks QEMU throttles to a modelled SSD (without it a cold read from the guest's disk costs what
a warm one does). Passes only if the run completed, had no failures, and its assertions held."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed.lifecycle.testbed import Testbed
from testbed.ui import cli

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node-ssd.yaml"))
REDUCED = ["workloads.serve.arrival.count=8"]


def test_reduced_placement_assertions_hold(testbed: Testbed, tmp_path: Path) -> None:
    out = tmp_path / "placement"
    sets = [f"testbed={testbed.topology.source}", *REDUCED]
    code = cli.main(["run", str(REPO / "scenarios" / "serverlessllm-placement.yaml"), "--out", str(out),
                     *[a for s in sets for a in ("--set", s)]])
    summary = json.loads((out / "summary.json").read_text())
    failures = json.loads((out / "failures.json").read_text())
    assert code == 0 and summary["complete"] and not failures, (code, failures[:3])
    assertions = summary["assertions"]
    assert assertions and all(a["ok"] and a["detail"] for a in assertions), [(a["text"], a["detail"]) for a in assertions]
    # the modelled SSD was in force: libvirt's live domain throttles the root disk
    xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", testbed.state.nodes["node0"].domain],
                         capture_output=True, text=True, check=True).stdout
    assert "<read_bytes_sec>100000000</read_bytes_sec>" in xml
    meta = json.loads((out / "meta.json").read_text())
    assert meta["testbed"]["brought_up_by_run"] is False
    routed = [json.loads(ln) for ln in (out / "raw.jsonl").read_text().splitlines()]
    away = [r for r in routed if r.get("type") == "invocation" and r["mode"] == "disk-random"
            and r["result"]["local"] == 0]
    assert away, "a random placement sent no request away from its model's home"
