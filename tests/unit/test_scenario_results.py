"""Percentile and summary math on known inputs; the raw log and --resume bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.scenario.output import results, stats


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4], 90, 3.7),
    ([1, 2, 3, 4], 99, 3.97),
    ([1, 2, 3, 4], 0, 1.0),
    ([1, 2, 3, 4], 100, 4.0),
    ([15, 20, 35, 40, 50], 40, 29.0),  # numpy.percentile(..., 40) == 29.0
    ([15, 20, 35, 40, 50], 50, 35.0),
    ([50, 15, 40, 20, 35], 90, 46.0),  # order does not matter
    ([7], 99, 7.0),
    (list(range(1, 101)), 99, 99.01),
])
def test_percentile_linear_interpolation(values: list[float], p: float, expected: float) -> None:
    assert stats.percentile(values, p) == pytest.approx(expected)


def test_percentile_errors_and_describe() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1], 101)
    d = stats.describe([4, 1, 3, 2])
    assert d == {"count": 4, "mean": 2.5, "median": 2.5, "p50": 2.5, "p90": pytest.approx(3.7),
                 "p99": pytest.approx(3.97), "min": 1, "max": 4}
    assert stats.describe([]) == {"count": 0, "mean": None, "median": None, "p50": None, "p90": None, "p99": None,
                                  "min": None, "max": None}


def inv(mode: str, wl: str, latency: float, *, ok: bool = True, warmup: bool = False, rep: int = 0,
        **extra: float) -> dict[str, Any]:
    return {"type": "invocation", "mode": mode, "workload": wl, "rep": rep, "ok": ok, "warmup": warmup,
            "metrics": {"latency_ms": latency, **extra}}


def mem(mode: str, wl: str, node: str, at: str, used: int, rep: int = 0) -> dict[str, Any]:
    return {"type": "memory", "mode": mode, "workload": wl, "rep": rep, "node": node, "at": at, "used_kb": used}


def test_summary_on_known_records() -> None:
    records = [
        inv("a", "w", 999.0, warmup=True),  # excluded from the statistics, counted as warm-up
        *(inv("a", "w", float(x), dispatch_ms=0.5, transport_ms=10.0 * x) for x in (10, 20, 30, 40)),
        inv("a", "w", 5000.0, ok=False),  # an error: counted, not in the latency statistics
        *(inv("b", "w", float(x), dispatch_ms=1.5, lateness_ms=2.0) for x in (100, 200)),
        mem("a", "w", "n0", "before", 1000), mem("a", "w", "n0", "during", 1500), mem("a", "w", "n0", "after", 1200),
        mem("a", "w", "n1", "before", 2000), mem("a", "w", "n1", "after", 2100),
        mem("b", "w", "n0", "before", 1000), mem("b", "w", "n0", "after", 1100),
        mem("b", "w", "n0", "before", 1000, rep=1), mem("b", "w", "n0", "after", 1300, rep=1),
    ]
    s = results.summarize(records, ["a", "b"], ["w"], ["latency_ms", "transport_ms"])
    a = s["modes"]["a"]["workloads"]["w"]
    assert (a["count"], a["errors"], a["error_rate"], a["warmup"]) == (5, 1, 0.2, 1)
    assert a["metrics"]["latency_ms"] == {"count": 4, "mean": 25.0, "median": 25.0, "p50": 25.0, "p90": 37.0,
                                          "p99": 39.7, "min": 10.0, "max": 40.0}
    assert a["metrics"]["transport_ms"]["median"] == 250.0
    # Memory of a unit: per node the highest use during/after, summed; the increase over "before".
    assert a["memory_kb"] == 1500 + 2100 and a["memory_delta_kb"] == 500 + 100
    assert s["modes"]["a"]["memory_kb"] == 3600
    assert s["modes"]["b"]["memory_kb"] == 1200.0  # median of the units 1100 and 1300
    assert s["modes"]["b"]["memory_delta_kb"] == 200.0
    ex = s["executor"]
    assert ex["invocations"] == 8 and ex["dispatch_ms_median"] == 0.5  # warm-up and errors count here
    assert ex["transport_ms_median"] == 250.0 and ex["lateness_ms_median"] == 2.0


def test_record_data_for_assertions() -> None:
    data = results.RecordData([inv("a", "w", 1.0, shared=1), inv("a", "w", 2.0, shared=0, ok=False),
                               inv("a", "w", 3.0, shared=True)])  # booleans are not numbers
    assert data.values("a", "w", "shared") == [1.0]
    assert data.counts("a", "w") == (3, 1)
    assert data.memory("a", "w", False) is None


def test_raw_log_and_resume_bookkeeping(tmp_path: Path) -> None:
    path = tmp_path / results.RAW
    log = results.RawLog(path)
    log.write({"type": "setup", "step": "s", "node": "n0", "ok": True})
    for rec in (mem("a", "w", "n0", "before", 1), inv("a", "w", 1.0), mem("a", "w", "n0", "after", 2)):
        log.write(rec)
    log.write({"type": "unit", "mode": "a", "workload": "w", "rep": 0, "status": "done"})
    log.write(mem("a", "w", "n0", "before", 1, rep=1))  # rep 1 was interrupted
    log.write(inv("a", "w", 2.0, rep=1))
    log.close()
    with open(path, "a") as fh:
        fh.write('{"type": "invocation", "mo')  # torn by a kill
    assert len(results.read_raw(path)) == 7
    done, dropped = results.keep_completed(path)
    assert done == {("a", "w", 0)} and dropped == 2
    kept = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [r["type"] for r in kept] == ["setup", "memory", "invocation", "memory", "unit"]
    assert all(r.get("rep", 0) == 0 for r in kept)


def test_read_raw_rejects_garbage_inside(tmp_path: Path) -> None:
    path = tmp_path / results.RAW
    path.write_text('{"type": "unit"}\nnot json\n{"type": "unit"}\n')
    with pytest.raises(Exception, match=":2: not a JSON line"):
        results.read_raw(path)


def test_executor_overhead_p99_and_the_nodes_own_time() -> None:
    records = [*(inv("a", "w", 100.0 + x, transport_ms=float(x), guest_ms=100.0) for x in range(1, 101)),
               inv("a", "w", 50.0, transport_ms=10.0, function_ms=40.0),  # an exec invocation: the timer's time
               inv("a", "w", 60.0, guest_ms=True)]  # not a number, and no transport figure: left out
    ex = results.summarize(records, ["a"], ["w"], ["latency_ms"])["executor"]
    assert ex["transport_ms_p99"] == pytest.approx(99.0)
    assert ex["transport_ms_median"] == 50.0
    assert ex["node_ms_median"] == 100.0  # 100 x guest_ms 100 and one function_ms 40
    assert ex["latency_ms_median"] == 150.0  # 50, 101..200: the invocations with a transport figure
    assert results.summarize([], ["a"], ["w"], ["latency_ms"])["executor"]["transport_ms_p99"] is None
