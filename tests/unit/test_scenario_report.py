"""report.md rendering, `testbed report`, and `testbed compare` regression flagging."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from testbed.scenario.output import report, stats
from testbed.ui import cli


def summary(lat: dict[str, list[float]], memory: dict[str, float] | None = None,
            errors: dict[str, int] | None = None) -> dict[str, Any]:
    modes: dict[str, Any] = {}
    for mode, values in lat.items():
        n = len(values) + (errors or {}).get(mode, 0)
        modes[mode] = {"memory_kb": (memory or {}).get(mode), "memory_delta_kb": None, "workloads": {"w[k=1]": {
            "count": n, "errors": (errors or {}).get(mode, 0), "error_rate": (errors or {}).get(mode, 0) / n,
            "warmup": 1, "memory_kb": None, "memory_delta_kb": None,
            "metrics": {"latency_ms": stats.describe(values), "throughput": stats.describe(values)}}}}
    return {"modes": modes, "executor": {"invocations": 9, "dispatch_ms_median": 0.125, "transport_ms_median": 80.5,
                                         "lateness_ms_median": 1.0, "lateness_ms_p99": 3.0},
            "assertions": [{"text": "p99_ms < 5", "ok": False, "failed": ["a w[k=1]: 30 < 5"], "detail": ""}],
            "wall_s": 12.5, "complete": True}


BASE = summary({"a": [10.0, 20.0, 30.0], "b": [1.0, 2.0, 3.0]}, memory={"a": 2048.0, "b": 1024.0})


def test_markdown_tables() -> None:
    meta = {"scenario": {"name": "s", "seed": 4, "repetitions": 1, "warmup": 1},
            "testbed": {"name": "tb", "nodes": ["n0"], "accelerator": "tcg", "kernel": {"release": "6.12"}},
            "git": {"commit": "abcdef1234567890", "dirty": False}, "qemu": "QEMU 10", "host": {"cpu": "EPYC"}}
    md = report.markdown(BASE, meta, [{"phase": "unit", "where": "a/w", "error": "boom\nmore"}], ["latency_cdf.png"])
    assert md.startswith("# Scenario s\n")
    assert "### w[k=1]\n\n| mode | n | errors | metric | median | mean | p50 | p90 | p99 | min | max | median/p99 basis |\n|---|" in md
    assert "| a | 3 | 0 | latency_ms | 20.00 | 20.00 | 20.00 | 28.00 | 29.80 | 10.00 | 30.00 |" in md
    assert "| a | 2.0 | - |" in md  # memory per mode, MiB
    assert "| 9 | 0.125 | 80.500 | 1.000 | 3.000 |" in md
    assert "| p99_ms < 5 | FAIL | a w[k=1]: 30 < 5 |" in md
    assert "| unit | a/w | boom |" in md and "![latency_cdf.png](latency_cdf.png)" in md
    assert "git abcdef123456;" in md and "accelerator tcg" in md


def test_compare_flags_regressions() -> None:
    new = copy.deepcopy(BASE)
    lat = new["modes"]["a"]["workloads"]["w[k=1]"]["metrics"]["latency_ms"]
    lat["median"] = 22.5  # +12.5%: a regression at the default 10%
    lat["p99"] = 30.0  # +0.7%: not
    new["modes"]["b"]["memory_kb"] = 1100.0  # +7.4%
    diffs = report.compare(BASE, new)
    bad = {(d.mode, d.workload, d.metric, d.stat) for d in diffs if d.regression}
    assert bad == {("a", "w[k=1]", "latency_ms", "median")}
    med = next(d for d in diffs if (d.mode, d.metric, d.stat) == ("a", "latency_ms", "median"))
    assert med.change == pytest.approx(0.125)
    assert not any(d.regression for d in report.compare(BASE, new, threshold=0.2))
    assert {(d.mode, d.metric) for d in report.compare(BASE, new, threshold=0.05) if d.regression} == {
        ("a", "latency_ms"), ("b", "memory_kb")}


def test_compare_higher_is_better_and_error_rates() -> None:
    new = copy.deepcopy(BASE)
    new["modes"]["b"]["workloads"]["w[k=1]"]["metrics"]["throughput"]["median"] = 1.5  # 2 -> 1.5
    new["modes"]["b"]["workloads"]["w[k=1]"]["metrics"]["latency_ms"]["median"] = 1.5  # faster: fine
    new["modes"]["a"]["workloads"]["w[k=1]"]["error_rate"] = 0.25
    bad = {(d.mode, d.metric) for d in report.compare(BASE, new, higher_better=["throughput"]) if d.regression}
    assert bad == {("b", "throughput"), ("a", "error_rate")}


def _folder(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(data))
    return d


def test_compare_and_report_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _folder(tmp_path, "old", BASE)
    same = _folder(tmp_path, "same", BASE)
    worse = copy.deepcopy(BASE)
    worse["modes"]["b"]["workloads"]["w[k=1]"]["metrics"]["latency_ms"]["p99"] = 9.0
    slow = _folder(tmp_path, "slow", worse)
    ops = cli.Ops()
    assert cli.main(["compare", str(old), str(same)], ops=ops) == 0
    assert "no regressions beyond 10%" in capsys.readouterr().out
    assert cli.main(["compare", str(old), str(slow)], ops=ops) == 1
    text = capsys.readouterr().out
    assert "REGRESSION" in text and "1 regression(s)" in text and "w[k=1]" in text
    assert cli.main(["compare", str(old), str(slow), "--threshold", "3"], ops=ops) == 0
    assert cli.main(["compare", str(old), str(tmp_path / "nothing")], ops=ops) == 2
    capsys.readouterr()
    assert cli.main(["report", str(old)], ops=ops) == 0
    text = capsys.readouterr().out
    assert "w[k=1] (ms)" in text and "latency_ms" in text and "executor overhead" in text


def test_executor_table_shows_transport_p99_host_latency_and_node_time() -> None:
    s = copy.deepcopy(BASE)
    s["executor"].update(transport_ms_p99=120.25, latency_ms_median=95.5, node_ms_median=15.0)
    md = report.markdown(s, {"scenario": {"name": "s"}}, [], [])
    assert ("| invocations | dispatch median (ms) | transport median (ms) | lateness median (ms) | lateness P99 (ms) "
            "| transport P99 (ms) | host latency median (ms) | node median (ms) |") in md
    assert "| 9 | 0.125 | 80.500 | 1.000 | 3.000 | 120.250 | 95.500 | 15.000 |" in md
    table = report.tables(s)[-2]  # the executor's, before the assertions
    assert [c.header for c in table.columns][-3:] == ["transport P99", "host latency median", "node median"]
