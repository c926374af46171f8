"""`testbed compare` with a significance test (Mann-Whitney U) on a real run's per-invocation
values, and its JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from testbed.scenario.output import compare, results
from testbed.ui import cli

DATA = Path(__file__).parent / "data" / "trace-replay-invocations.jsonl"
MODES, WORKLOADS, METRICS = ["trenv", "criu-fresh"], ["bursty"], ["latency_ms", "startup_ms"]


def real_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines()]


def scaled(records: list[dict[str, Any]], factor: float, mode: str = "trenv") -> list[dict[str, Any]]:
    return [dict(r, metrics={k: v * factor for k, v in r["metrics"].items()}) if r["mode"] == mode else r
            for r in records]


def folder(tmp_path: Path, name: str, records: list[dict[str, Any]], raw: bool = True) -> Path:
    d = tmp_path / name
    d.mkdir()
    results.write_json(d / results.SUMMARY, results.summarize(records, MODES, WORKLOADS, METRICS))
    if raw:
        (d / results.RAW).write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def diffs(old: list[dict[str, Any]], new: list[dict[str, Any]], **kw: Any) -> list[compare.Difference]:
    s_old, s_new = (results.summarize(x, MODES, WORKLOADS, METRICS) for x in (old, new))
    return compare.compare(s_old, s_new, old_raw=results.RecordData(old), new_raw=results.RecordData(new), **kw)


def row(ds: list[compare.Difference], mode: str, metric: str, stat: str) -> compare.Difference:
    return next(d for d in ds if (d.mode, d.metric, d.stat) == (mode, metric, stat))


def test_mann_whitney_on_real_values() -> None:
    data = results.RecordData(real_records())
    trenv, criu = data.values("trenv", "bursty", "latency_ms"), data.values("criu-fresh", "bursty", "latency_ms")
    same = compare.mann_whitney(trenv, trenv)
    assert same is not None and same.p_value == pytest.approx(1.0) and (same.n_old, same.n_new) == (72, 72)
    # in that run the two modes' latencies were close (medians 2,657 and 2,575 ms): no evidence
    close = compare.mann_whitney(criu, trenv)
    assert close is not None and close.p_value > 0.5
    # their start-up times were not (medians 1,161 and 1,663 ms): the test must see it
    start = compare.mann_whitney(data.values("criu-fresh", "bursty", "startup_ms"), data.values("trenv", "bursty", "startup_ms"))
    assert start is not None and start.p_value < 0.001
    assert compare.mann_whitney(trenv[:1], criu) is None
    assert compare.mann_whitney([3.0, 3.0], [3.0, 3.0]) == compare.Test(1.0, 2, 2)


def test_a_run_against_itself_is_not_significant() -> None:
    recs = real_records()
    ds = diffs(recs, recs)
    lat = row(ds, "trenv", "latency_ms", "median")
    assert lat.p_value == pytest.approx(1.0) and lat.significant is False and not lat.regression
    assert not any(d.regression for d in ds)


def test_a_real_slowdown_is_significant_and_a_regression() -> None:
    recs = real_records()
    ds = diffs(recs, scaled(recs, 1.5))
    med = row(ds, "trenv", "latency_ms", "median")
    assert med.change == pytest.approx(0.5) and med.significant is True and med.p_value is not None
    assert med.p_value < 0.05 and med.regression and (med.n_old, med.n_new) == (72, 72)
    assert not row(ds, "criu-fresh", "latency_ms", "median").regression  # untouched mode


def test_a_change_beyond_the_threshold_that_noise_explains_is_not_a_regression() -> None:
    recs = real_records()
    # five invocations of each: +15% on the median is beyond the 10% threshold, but five
    # values of this spread cannot show it
    few = [r for r in recs if r["mode"] == "trenv"][:5]
    ds = diffs(few, scaled(few, 1.15))
    med = row(ds, "trenv", "latency_ms", "median")
    assert med.change == pytest.approx(0.15)
    assert med.significant is False and med.p_value is not None and med.p_value > 0.05 and not med.regression
    # without raw values only the threshold decides (the old behaviour), and says it did not test
    s_old, s_new = (results.summarize(x, MODES, WORKLOADS, METRICS) for x in (few, scaled(few, 1.15)))
    plain = row(compare.compare(s_old, s_new), "trenv", "latency_ms", "median")
    assert plain.regression and plain.p_value is None and plain.significant is None
    # with alpha 0.999 almost any change counts as significant, so the same row is a regression
    assert row(diffs(few, scaled(few, 1.15), alpha=0.999), "trenv", "latency_ms", "median").regression


def test_two_real_modes_as_old_and_new() -> None:
    """CRIU's invocations as the old run, TrEnv's as the new, under one mode name: latency is +3%
    and not significant; start-up is 30% faster, significantly; PSS is lower, significantly."""
    recs = real_records()
    old = [dict(r, mode="m") for r in recs if r["mode"] == "criu-fresh"]
    new = [dict(r, mode="m") for r in recs if r["mode"] == "trenv"]
    s_old, s_new = (results.summarize(x, ["m"], WORKLOADS, METRICS) for x in (old, new))
    ds = compare.compare(s_old, s_new, threshold=0.02, old_raw=results.RecordData(old), new_raw=results.RecordData(new))
    lat = row(ds, "m", "latency_ms", "median")
    assert lat.change is not None and 0.02 < lat.change < 0.05  # beyond a 2% threshold ...
    assert lat.significant is False and not lat.regression  # ... but not significant: no regression
    assert lat.beyond_threshold and not row(ds, "m", "startup_ms", "median").beyond_threshold
    st = row(ds, "m", "startup_ms", "median")
    assert st.change is not None and st.change < -0.25 and st.significant is True and not st.regression


def test_compare_verb_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = real_records()
    old, same, slow = folder(tmp_path, "old", recs), folder(tmp_path, "same", recs), folder(tmp_path, "slow", scaled(recs, 1.5))
    ops = cli.Ops()
    assert cli.main(["compare", str(old), str(same), "--json"], ops=ops) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["regressions"] == 0 and out["alpha"] == 0.05 and out["threshold"] == 0.1
    assert cli.main(["compare", str(old), str(slow), "--json"], ops=ops) == 1
    out = json.loads(capsys.readouterr().out)
    bad = [r for r in out["rows"] if r["regression"]]
    assert {(r["mode"], r["metric"]) for r in bad} == {("trenv", "latency_ms"), ("trenv", "startup_ms")}
    assert all(r["significant"] is True and r["p_value"] < 0.05 and r["n_old"] == 72 for r in bad)
    assert bad[0]["change"] == pytest.approx(0.5)
    assert cli.main(["compare", str(old), str(slow)], ops=ops) == 1
    text = capsys.readouterr().out
    assert "p (MWU)" in text and "significant at alpha 0.05" in text and "REGRESSION" in text
    assert cli.main(["compare", str(old), str(slow), "--alpha", "1.5"], ops=ops) == 2


def test_compare_verb_says_what_noise_hid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """+20% on every TrEnv invocation of that run: beyond 10%, but its 72 values vary so much
    that Mann-Whitney does not call it significant at 0.05 (p about 0.055): no regression, and
    the output says which rows were beyond the threshold."""
    recs = real_records()
    old, slow = folder(tmp_path, "old", recs), folder(tmp_path, "slow", scaled(recs, 1.2))
    assert cli.main(["compare", str(old), str(slow)], ops=cli.Ops()) == 0
    assert "4 row(s) worse beyond 10% but not significant" in capsys.readouterr().out
    assert cli.main(["compare", str(old), str(slow), "--alpha", "0.1"], ops=cli.Ops()) == 1


def test_compare_verb_without_raw_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = real_records()
    old, slow = folder(tmp_path, "old", recs, raw=False), folder(tmp_path, "slow", scaled(recs, 1.5))
    assert cli.main(["compare", str(old), str(slow)], ops=cli.Ops()) == 1
    assert "no significance test" in capsys.readouterr().out
