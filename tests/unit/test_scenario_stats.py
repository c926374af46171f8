"""numpy/scipy statistics: the percentile definition is unchanged, bootstrap intervals are
reproducible and contain the estimate, repetitions are kept apart; on a real run's values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.scenario.output import results, stats

DATA = Path(__file__).parent / "data" / "trace-replay-invocations.jsonl"


def real_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


def hand_percentile(values: list[float], p: float) -> float:
    """The definition the hand-written code used (type 7), to check numpy agrees."""
    xs = sorted(values)
    h = (len(xs) - 1) * p / 100
    lo = int(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def test_percentiles_match_the_old_definition_on_real_values() -> None:
    data = results.RecordData(real_records())
    lat = data.values("trenv", "bursty", "latency_ms")
    assert len(lat) == 72
    for p in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert stats.percentile(lat, p) == pytest.approx(hand_percentile(lat, p), rel=1e-12)
    # the figure in that run's summary.json (rounded to 4 places there)
    assert stats.describe(lat)["p99"] == pytest.approx(8342.1015, abs=1e-4)


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate() -> None:
    lat = results.RecordData(real_records()).values("criu-fresh", "bursty", "latency_ms")
    ci = stats.bootstrap_ci(lat, 50)
    assert ci is not None and ci == stats.bootstrap_ci(lat, 50)  # fixed seed
    assert ci.low <= stats.percentile(lat, 50) <= ci.high and ci.low < ci.high
    p99 = stats.bootstrap_ci(lat, 99)
    assert p99 is not None and p99.low <= stats.percentile(lat, 99) <= p99.high
    assert p99.high <= max(lat) and p99.low >= min(lat)
    # a different seed moves the bounds a little, not the estimate
    other = stats.bootstrap_ci(lat, 50, seed=1)
    assert other is not None and other != ci


def test_interval_narrows_with_more_values() -> None:
    few = [float(x % 17) for x in range(20)]
    many = few * 20
    a, b = stats.bootstrap_ci(few, 50), stats.bootstrap_ci(many, 50)
    assert a is not None and b is not None and (b.high - b.low) < (a.high - a.low)


def test_interval_edge_cases() -> None:
    assert stats.bootstrap_ci([], 50) is None and stats.bootstrap_ci([3.0], 50) is None
    assert stats.bootstrap_ci([2.0, 2.0, 2.0], 99) == stats.Interval(2.0, 2.0)
    assert stats.intervals([1.0]) == {"median": None, "p99": None}


def test_repetitions_are_kept_apart() -> None:
    r = stats.by_repetition({1: [10.0, 20.0, 30.0], 0: [1.0, 2.0, 3.0], 2: []})
    assert r["reps"] == [{"rep": 0, "count": 3, "median": 2.0, "p99": pytest.approx(2.98)},
                         {"rep": 1, "count": 3, "median": 20.0, "p99": pytest.approx(29.8)}]
    assert r["median"] == {"n": 2, "mean": 11.0, "sd": pytest.approx(12.7279, abs=1e-4), "min": 2.0, "max": 20.0}
    one = stats.by_repetition({0: [5.0]})
    assert one["median"] == {"n": 1, "mean": 5.0, "sd": None, "min": 5.0, "max": 5.0}


def test_summary_carries_intervals_and_repetitions() -> None:
    recs = real_records()
    # the same run twice, as two repetitions, the second 10% slower
    second = [dict(r, rep=1, metrics={k: v * 1.1 for k, v in r["metrics"].items()}) for r in recs]
    s = results.summarize(recs + second, ["trenv", "criu-fresh"], ["bursty"], ["latency_ms"])
    w = s["modes"]["trenv"]["workloads"]["bursty"]
    assert w["metrics"]["latency_ms"]["count"] == 144  # the pooled figures stay as they were
    lo, hi = w["ci"]["latency_ms"]["median"]
    assert lo <= w["metrics"]["latency_ms"]["median"] <= hi
    reps = w["repetitions"]["latency_ms"]
    assert [r["rep"] for r in reps["reps"]] == [0, 1] and [r["count"] for r in reps["reps"]] == [72, 72]
    assert reps["reps"][1]["median"] == pytest.approx(reps["reps"][0]["median"] * 1.1, rel=1e-3)
    assert reps["median"]["n"] == 2 and reps["median"]["min"] < reps["median"]["max"]
    json.dumps(s)  # summary.json stays plain JSON


def test_report_shows_intervals_and_repetitions() -> None:
    from testbed.scenario.output import report

    recs = real_records()
    second = [dict(r, rep=1) for r in recs]
    s = results.summarize(recs + second, ["trenv"], ["bursty"], ["latency_ms"])
    w = s["modes"]["trenv"]["workloads"]["bursty"]
    one = results.summarize(recs, ["trenv"], ["bursty"], ["latency_ms"])
    w1 = one["modes"]["trenv"]["workloads"]["bursty"]
    lo, hi = w1["ci"]["latency_ms"]["median"]
    row1 = report.metric_rows(one, "bursty")[0]
    # one repetition: the pooled figure with its bootstrap interval
    assert row1[4] == f"{w1['metrics']['latency_ms']['median']:.2f} [{lo:.2f}, {hi:.2f}]" and row1[-1] == "pooled"
    row = report.metric_rows(s, "bursty")[0]
    assert not row[6].endswith("]")  # p50: the same figure as the median; its interval is shown once
    # two repetitions: median and p99 lead with the mean over repetitions and a t interval
    reps = w["repetitions"]["latency_ms"]["reps"]
    head = w["headline"]["latency_ms"]
    assert head["basis"] == "repetitions" and head["n"] == 2
    assert head["median"] == pytest.approx((reps[0]["median"] + reps[1]["median"]) / 2)
    assert row[4].startswith(f"{head['median']:.2f} [") and row[-1] == "2 reps"
    assert row[8].startswith(f"{head['p99']:.2f} [") and row[5] == f"{w['metrics']['latency_ms']['mean']:.2f}"
    md = report.markdown(s, {}, [], [])
    assert "| mode | metric | repetitions | median per repetition |" in md
    assert "| trenv | latency_ms | 2 |" in md


def test_headline_is_across_repetitions() -> None:
    h = stats.headline({0: [1.0, 2.0, 3.0], 1: [10.0, 20.0, 30.0], 2: [4.0, 5.0, 6.0]})
    assert h["basis"] == "repetitions" and h["n"] == 3
    assert h["median"] == pytest.approx(9.0)  # (2 + 20 + 5) / 3, not the pooled median 5
    # t interval over (2, 20, 5): mean 9, sd 9.6437, t(0.975, 2) = 4.3027
    ci = h["median_ci"]
    assert isinstance(ci, list)
    lo, hi = ci
    assert lo == pytest.approx(9.0 - 4.3027 * 9.6437 / 3 ** 0.5, abs=1e-3)
    assert hi == pytest.approx(9.0 + 4.3027 * 9.6437 / 3 ** 0.5, abs=1e-3)
    one = stats.headline({0: [1.0, 2.0, 3.0], 1: []})
    assert one["basis"] == "invocations" and one["median"] == 2.0 and one["n"] == 3
    assert one["median_ci"] == stats.bootstrap_ci([1.0, 2.0, 3.0], 50).as_list()  # type: ignore[union-attr]
    assert stats.t_interval([4.0, 4.0]) == stats.Interval(4.0, 4.0) and stats.t_interval([4.0]) is None
