"""`testbed compare OLD NEW`: the figures of two results folders side by side, the relative
change, and whether it is significant.

The test is Mann-Whitney U (two-sided) on the raw per-invocation values of a metric (raw.jsonl,
warm-up and failed invocations excluded): it asks whether one run's values tend to be larger than
the other's, so it is one p-value per (mode, workload, metric), shown on each of that metric's
rows (median, P99). A row is a regression when it is worse by more than the threshold and, when
both folders have raw values, the change is significant (p < alpha). Without raw.jsonl (an old
results folder) only the threshold decides and the significance is unknown. Error rates regress on
any rise; memory is a median over units, too few values for a test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rich.markup import escape
from rich.table import Table
from scipy import stats as sps
from tbproto.jsontypes import JsonObject

from testbed.scenario.output.results import RecordData

DEFAULT_ALPHA = 0.05
MIN_VALUES = 2  # per side; fewer values cannot show anything


@dataclass(frozen=True)
class Difference:
    mode: str
    workload: str  # "" for per-mode values (memory)
    metric: str
    stat: str
    old: float | None
    new: float | None
    regression: bool
    p_value: float | None = None  # Mann-Whitney U on the raw values; None when not tested
    significant: bool | None = None  # p_value < alpha; None when not tested
    n_old: int | None = None
    n_new: int | None = None
    beyond_threshold: bool = False  # worse by more than the threshold, significant or not

    @property
    def change(self) -> float | None:
        if self.old is None or self.new is None or self.old == 0:
            return None
        return (self.new - self.old) / abs(self.old)

    def as_json(self) -> JsonObject:
        return {**asdict(self), "change": self.change}


@dataclass(frozen=True)
class Test:
    p_value: float
    n_old: int
    n_new: int


def mann_whitney(old: Sequence[float], new: Sequence[float]) -> Test | None:
    """Two-sided Mann-Whitney U; None with fewer than MIN_VALUES on a side."""
    if len(old) < MIN_VALUES or len(new) < MIN_VALUES:
        return None
    if len(set(old) | set(new)) == 1:  # all equal: nothing differs (scipy would divide by zero)
        return Test(1.0, len(old), len(new))
    p = float(sps.mannwhitneyu(old, new, alternative="two-sided").pvalue)
    return Test(p if math.isfinite(p) else 1.0, len(old), len(new))


def _worse(old: float | None, new: float | None, threshold: float, higher_better: bool) -> bool:
    if old is None or new is None:
        return False
    if higher_better:
        return new < old - threshold * abs(old)
    if old == 0:
        return new > 0
    return new > old + threshold * abs(old)


def compare(old: JsonObject, new: JsonObject, threshold: float = 0.10,
            stats: Sequence[str] = ("median", "p99"), higher_better: Sequence[str] = (),
            old_raw: RecordData | None = None, new_raw: RecordData | None = None,
            alpha: float = DEFAULT_ALPHA) -> list[Difference]:
    """Every (mode, workload, metric, statistic) in both summaries, plus error rates and memory.
    A regression: worse by more than threshold (a fraction of the old value) and, when both raw
    records are given, significant at alpha; every metric is taken as lower-is-better unless
    named in higher_better. Error rates regress on any rise."""
    out: list[Difference] = []
    for mode, n_entry in new.get("modes", {}).items():
        o_entry = old.get("modes", {}).get(mode)
        if o_entry is None:
            continue
        for wl, nw in n_entry.get("workloads", {}).items():
            ow = o_entry.get("workloads", {}).get(wl)
            if ow is None:
                continue
            for metric, nst in nw.get("metrics", {}).items():
                ost = ow.get("metrics", {}).get(metric)
                if ost is None:
                    continue
                test = None
                if old_raw is not None and new_raw is not None:
                    test = mann_whitney(old_raw.values(mode, wl, metric), new_raw.values(mode, wl, metric))
                sig = None if test is None else test.p_value < alpha
                for st in stats:
                    o, n = ost.get(st), nst.get(st)
                    worse = _worse(o, n, threshold, metric in higher_better)
                    out.append(Difference(mode, wl, metric, st, o, n, worse and sig is not False,
                                          None if test is None else test.p_value, sig,
                                          None if test is None else test.n_old, None if test is None else test.n_new, worse))
            o, n = ow.get("error_rate"), nw.get("error_rate")
            out.append(Difference(mode, wl, "error_rate", "", o, n, o is not None and n is not None and n > o))
        for key in ("memory_kb",):
            o, n = o_entry.get(key), n_entry.get(key)
            if o is not None or n is not None:
                out.append(Difference(mode, "", key, "median", o, n, _worse(o, n, threshold, False)))
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 1e6 else f"{v:.4g}"


def _p(d: Difference) -> str:
    if d.p_value is None:
        return "-"
    return f"{d.p_value:.3g}" + (" *" if d.significant else "")


def compare_table(diffs: Sequence[Difference], old_name: str, new_name: str) -> Table:
    t = Table(title=f"{old_name} -> {new_name}")
    for col in ("mode", "workload", "metric", "stat", "old", "new", "change", "p (MWU)", ""):
        t.add_column(col, justify="right" if col in ("old", "new", "change", "p (MWU)") else "left")
    for d in diffs:
        ch = d.change
        t.add_row(escape(d.mode), escape(d.workload), escape(d.metric), d.stat, _fmt(d.old), _fmt(d.new),
                  "-" if ch is None else f"{ch * 100:+.1f}%", _p(d), "[red]REGRESSION[/]" if d.regression else "")
    return t


def as_json(diffs: Sequence[Difference], old_name: str, new_name: str, threshold: float, alpha: float) -> JsonObject:
    """What `testbed compare --json` prints."""
    return {"old": old_name, "new": new_name, "threshold": threshold, "alpha": alpha,
            "test": "mann-whitney-u two-sided on per-invocation values",
            "regressions": sum(1 for d in diffs if d.regression),
            "rows": [d.as_json() for d in diffs]}
