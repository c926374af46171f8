"""`testbed run scenarios/smoke.yaml` on a real 2-node testbed: every artefact is there and
well-formed, and no VM (or any other object of the testbed) is left afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testbed.config.topology import renamed_topology
from testbed.lifecycle import provision

from .leftovers import assert_clean, leftovers

REPO = Path(__file__).resolve().parents[2]
NAME = f"scn{os.getpid() % 10000}-smoke"
PNG = b"\x89PNG\r\n\x1a\n"


def test_smoke_scenario(tmp_path: Path) -> None:
    topo = renamed_topology(REPO / "testbeds" / "two-node.yaml", NAME, tmp_path)
    out = tmp_path / "results"
    try:
        p = subprocess.run([sys.executable, "-m", "testbed", "run", str(REPO / "scenarios" / "smoke.yaml"),
                            "--set", f"testbed={topo}", "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
        assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        assert not any(leftovers(NAME).values()), "the run must tear down the testbed it brought up"
    finally:
        if any(leftovers(NAME).values()):
            provision.down(NAME)
    assert_clean(NAME)

    # raw.jsonl: one JSON object per line, every unit complete, invocations on the right nodes.
    raw = [json.loads(ln) for ln in (out / "raw.jsonl").read_text().splitlines()]
    kinds = {r["type"] for r in raw}
    assert {"setup", "memory", "invocation", "unit"} <= kinds
    invocations = [r for r in raw if r["type"] == "invocation"]
    assert all(r["ok"] for r in invocations), [r for r in invocations if not r["ok"]][:3]
    assert {r["node"] for r in invocations if r["mode"] == "node0"} == {"node0"}
    assert {r["node"] for r in invocations if r["mode"] == "node1"} == {"node1"}
    assert all(r["metrics"]["latency_ms"] > 0 and r["metrics"]["dispatch_ms"] >= 0 for r in invocations)
    shared = [r["result"]["shared"] for r in invocations if r["workload"] == "dax-read"]
    assert shared and all(s == 1 for s in shared)  # both heads read the token node0 wrote

    # summary.json
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] and s["complete"] and s["units"]["done"] == s["units"]["total"] == 14
    assert set(s["modes"]) == {"node0", "node1"}
    for mode in s["modes"].values():
        assert mode["memory_kb"] > 0
        for wl in ("json", "matmul", "dax-read", "agent-ping", "instances[instances=4]"):
            st = mode["workloads"][wl]["metrics"]["latency_ms"]
            assert st["count"] > 0 and st["min"] <= st["p50"] <= st["p90"] <= st["p99"] <= st["max"]
            assert set(st) == {"count", "mean", "median", "p50", "p90", "p99", "min", "max"}
    assert s["executor"]["invocations"] == len(invocations) and s["executor"]["dispatch_ms_median"] > 0
    assert s["executor"]["transport_ms_median"] > 0
    assert len(s["assertions"]) == 5 and all(a["ok"] for a in s["assertions"])

    # meta.json
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scenario"]["name"] == "smoke" and meta["scenario"]["overrides"] == [f"testbed={topo}"]
    assert meta["scenario"]["resolved"]["testbed"] == str(topo) and meta["seed"] == 42
    assert meta["topology"]["name"] == NAME and f"name: {NAME}" in meta["topology"]["text"]
    assert meta["testbed"]["brought_up_by_run"] and not meta["testbed"]["kept"]
    assert meta["accelerator"] in ("tcg", "kvm") and meta["testbed"]["kernel"]["release"]
    assert meta["qemu"]["kind"] == "patched" and meta["qemu"]["version"] == "10.0.2" and meta["libvirt"]
    assert len(meta["qemu"]["patches"]) == 4 and meta["qemu"]["key"] in meta["qemu"]["path"]
    # Each head's path as QEMU reported it at the start and at the end, and what that distorts.
    for key in ("cxl_paths", "cxl_paths_end"):
        assert sorted((h["node"], h["observed"]) for h in meta[key]) == [("node0", "direct"), ("node1", "direct")]
    assert any(n.startswith("direct path:") for n in meta["emulation"]["distortions"])
    assert meta["host"]["cpu"] and len(meta["git"]["commit"]) == 40
    assert meta["started"] < meta["ended"]

    # report.md and the plots
    report = (out / "report.md").read_text()
    assert report.startswith("# Scenario smoke")
    for heading in ("### json", "### matmul", "### dax-read", "## Memory per mode", "## Executor overhead", "## Assertions",
                    "## What emulation distorts"):
        assert heading in report
    assert "| node0 | 6 | 0 | latency_ms |" in report and "| min(shared) == 1 for workload dax-read | pass |" in report
    for png in ("latency_cdf.png", "memory_instances.png", "startup_breakdown.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, png
        assert f"![{png}]({png})" in report
    assert json.loads((out / "failures.json").read_text()) == []
