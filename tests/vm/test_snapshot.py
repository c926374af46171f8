"""Snapshot sharing on a 2-node testbed: snapshots taken on node0 into the shared CXL store,
restored in every mode on node1 and on node0 (issue 4, part 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.lifecycle.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.vm, pytest.mark.topology(str(REPO / "testbeds" / "two-node.yaml"))]

MODES = ("cold", "criu", "lazy", "template")
# function -> (snapshot env, the request the instances answer)
WORKLOADS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "hello": ({}, {"name": "cxl"}),
    "jsonrt": ({}, {"items": 200}),
    "imgresize": ({}, {"w": 160, "h": 120}),
    "matmul": ({}, {"n": 64, "seed": 3}),
    "inference": ({}, {"batch": 8, "seed": 5}),
    "compress": ({}, {"kib": 256, "algo": "zlib"}),
    "heap": ({"HEAP_MIB": "32"}, {"touch_pct": 100, "write_ratio": 0.1, "seed": 7}),
}


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def snap_run(tb: Testbed, node: str, name: str, mode: str, *extra: str) -> list[dict[str, Any]]:
    r = tb.exec(node, "tbagent", "snap", "run", name, "--mode", mode, *extra, check=False)
    assert r.exit_code == 0, f"{node} {name} {mode}: {r.stderr[-800:]}"
    return _lines(r.stdout)


@pytest.fixture(scope="module")
def snapshots(testbed: Testbed) -> dict[str, dict[str, Any]]:
    testbed.exec("node0", "tbagent", "store", "format", "mhd0")
    taken = {}
    for fn, (env, event) in WORKLOADS.items():
        argv = ["tbagent", "snap", "take", fn, fn, "--warm", json.dumps(event)]
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        taken[fn] = json.loads(testbed.exec("node0", *argv).stdout)
    return taken


@pytest.mark.parametrize("node", ["node1", "node0"])
def test_every_mode_answers_like_a_cold_start(testbed: Testbed, snapshots: dict[str, dict[str, Any]], node: str) -> None:
    for fn, (_, event) in WORKLOADS.items():
        assert snapshots[fn]["areas"] > 0 and snapshots[fn]["template_bytes"] > 0
        results = {}
        for mode in MODES:
            rec = snap_run(testbed, node, fn, mode, "--event", json.dumps(event), "--replay-warm")[0]
            assert rec["ok"], f"{node} {fn} {mode}: {rec['error']}"
            assert rec["startup_ms"] > 0 and rec["first_request_ms"] > 0
            results[mode] = rec["result"]
        for mode in MODES[1:]:
            assert results[mode] == results["cold"], f"{node} {fn}: {mode} answered {results[mode]}, cold {results['cold']}"


def test_template_metrics_split_local_and_cxl(testbed: Testbed, snapshots: dict[str, dict[str, Any]]) -> None:
    rec, summary = snap_run(testbed, "node1", "heap", "template", "--event",
                            json.dumps({"touch_pct": 100, "write_ratio": 0.25, "seed": 1}))
    mem = rec["memory"]
    heap_kib = 32 * 1024
    # Every heap page was read: most from CXL; a quarter of them written: copied into local DRAM.
    assert mem["rss_cxl_kib"] >= heap_kib * 0.7, mem
    assert heap_kib * 0.25 * 0.9 <= mem["cow_pages"] * 4 <= heap_kib * 0.6, mem
    assert rec["faults"]["minflt"] > 0
    assert summary["template"]["cow_copies"] >= mem["cow_pages"] * 0.9
    assert summary["template"]["shared_maps"] > 0
    for key in ("used_kib", "available_kib"):
        assert key in rec["node_before"] and key in rec["node_after"]


def test_template_instances_on_both_nodes_map_the_same_cxl_pages(testbed: Testbed,
                                                                 snapshots: dict[str, dict[str, Any]]) -> None:
    frames = {n: json.loads(testbed.exec(n, "tbagent", "snap", "frames", "heap").stdout) for n in ("node0", "node1")}
    f0, f1 = frames["node0"], frames["node1"]
    assert f0["pages"] >= 0.9 * f0["template_pages"], f0
    assert f0["matches_store"] == f0["pages"], f0   # each page is the store's copy of it
    assert f1["matches_store"] == f1["pages"], f1
    assert f0["digest"] == f1["digest"] and f0["pages"] == f1["pages"]


def test_ten_template_instances_use_far_less_local_memory_than_ten_criu(testbed: Testbed,
                                                                         snapshots: dict[str, dict[str, Any]]) -> None:
    event = json.dumps({"touch_pct": 100, "write_ratio": 0.0, "seed": 2})
    out = {m: snap_run(testbed, "node1", "heap", m, "--count", "10", "--event", event) for m in ("criu", "template")}
    criu, tmpl = out["criu"][-1], out["template"][-1]
    assert criu["summary"] and tmpl["summary"] and criu["instances"] == tmpl["instances"] == 10
    assert len({json.dumps(r["result"]) for r in out["criu"][:-1] + out["template"][:-1]}) == 1
    # Without sharing a template instance holds its 32 MiB heap locally, like a criu one: the
    # bound fails at once if attach copied, or if CRIU restored the template's pages itself.
    assert criu["local_kib_per_instance"] >= 32 * 1024, criu
    assert tmpl["local_kib_per_instance"] <= 0.25 * criu["local_kib_per_instance"], (tmpl, criu)
    assert tmpl["pss_local_kib"] <= 0.25 * criu["pss_local_kib"], (tmpl, criu)
    assert tmpl["rss_cxl_kib"] >= 10 * 32 * 1024 * 0.9
    # The ten map the same CXL pages: their proportional shares add up to one copy, not ten.
    assert tmpl["pss_cxl_kib"] <= 1.2 * tmpl["rss_cxl_kib"] / 10, tmpl


def test_template_restore_into_repurposed_sandboxes(testbed: Testbed, snapshots: dict[str, dict[str, Any]]) -> None:
    """TrEnv's full path (issue 5, part 5): the template instance is restored by CRIU inside a
    repurposed pool sandbox (its cgroup, namespaces and the function's rootfs); the baseline is a
    CRIU restore into a sandbox created for it."""
    testbed.exec("node1", "tbagent", "sandbox", "pool", "--size", "2", "--max", "8")
    try:
        event = json.dumps({"name": "sbx"})
        cold = snap_run(testbed, "node1", "hello", "cold", "--event", event)[0]["result"]
        for mode, placement in (("template", "pool"), ("criu", "fresh")):
            recs = snap_run(testbed, "node1", "hello", mode, "--sandbox", placement, "--count", "2", "--event", event)
            inst, summary = recs[:-1], recs[-1]
            assert summary["sandbox"] == placement and len(inst) == 2
            for r in inst:
                assert r["ok"], r["error"]
                res = r["result"]
                # The function's own rootfs layer, the sandbox's hostname: it runs in the sandbox.
                assert res["layer"] == "hello" and res["hostname"].startswith("sbx-"), res
                assert {k: v for k, v in res.items() if k not in ("layer", "hostname")} == \
                       {k: v for k, v in cold.items() if k not in ("layer", "hostname")}
            assert inst[0]["result"]["hostname"] != inst[1]["result"]["hostname"]  # two sandboxes alive
            if mode == "template":
                assert all(r["memory"]["rss_cxl_kib"] > 0 for r in inst)
                assert summary["template"]["shared_maps"] > 0
            else:
                assert all("sandbox_create_ms" in r and r["memory"]["rss_cxl_kib"] == 0 for r in inst)
        status = json.loads(testbed.exec("node1", "tbagent", "sandbox", "status").stdout)
        assert status["busy"] == [] and len(status["idle"]) == 2  # repurposed ones went back; fresh ones are gone
    finally:
        testbed.exec("node1", "tbagent", "sandbox", "stop", check=False)


def test_bad_input_is_one_line_exit_2(testbed: Testbed, snapshots: dict[str, dict[str, Any]]) -> None:
    for argv in (["snap", "run", "no-such-snapshot", "--mode", "criu"],
                 ["snap", "take", "hello", "hello"],                      # the name is taken
                 ["snap", "take", "bad name", "hello"],
                 ["snap", "run", "hello", "--mode", "warp"]):
        r = testbed.exec("node1", "tbagent", *argv, check=False)
        assert r.exit_code == 2, (argv, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert "Traceback" not in r.stderr and last.startswith("tbagent") and ("error" in last or ":" in last), r.stderr
    # No instance directory or function process left behind.
    script = ("import os, pathlib\n"
              "d = pathlib.Path('/run/tbagent/instances')\n"
              "print(len(list(d.iterdir())) if d.exists() else 0)\n"
              "def fn(p):\n"
              "    try:\n"
              "        return b'\\x00tbagent.snap.fnserver\\x00' in pathlib.Path(f'/proc/{p}/cmdline').read_bytes()\n"
              "    except OSError:\n"
              "        return False\n"
              "print(sum(fn(p) for p in os.listdir('/proc') if p.isdigit()))\n")
    left = testbed.exec("node1", "python3", "-c", script)
    assert left.stdout.split() == ["0", "0"], left.stdout
