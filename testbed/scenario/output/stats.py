"""Summary statistics (numpy and scipy). Percentiles use linear interpolation between closest
ranks (Hyndman and Fan type 7, numpy's default): for sorted x[0..n-1] and p in [0, 100],
h = (n - 1) * p / 100 and P = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).

Confidence intervals are percentile bootstraps (scipy.stats.bootstrap, 95%, a fixed seed, so a
summary is reproducible) over the invocations of one run. Repetitions are also kept apart: each
repetition's own median and P99, and across repetitions the mean, standard deviation, minimum and
maximum of those figures (the run-to-run spread a pooled statistic hides).

The headline median and P99 of a run with several repetitions are not pooled: each repetition is
one sample of the experiment, so the headline is the mean of the repetitions' own medians (P99s)
with a Student t 95% interval over them; a run of one repetition falls back to the pooled figure
and its bootstrap interval over invocations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

PERCENTILES = (50, 90, 99)
CI_LEVEL = 0.95
CI_RESAMPLES = 2000
CI_SEED = 20241129  # fixed: the same values give the same interval in every run
CI_STATS = ("median", "p99")
_STAT_P = {"median": 50.0, "p99": 99.0}


def _array(values: Sequence[float]) -> npt.NDArray[np.float64]:
    return np.asarray(values, dtype=float)


def percentile(values: Sequence[float], p: float) -> float:
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside [0, 100]")
    return float(np.percentile(_array(values), p, method="linear"))


def mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("mean of no values")
    return float(np.mean(_array(values)))


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, median, p50, p90, p99, min and max; None for each but count when empty."""
    if len(values) == 0:
        return {"count": 0, "mean": None, "median": None, **{f"p{p}": None for p in PERCENTILES},
                "min": None, "max": None}
    a = _array(values)
    pct = np.percentile(a, PERCENTILES, method="linear")
    return {"count": len(values), "mean": float(np.mean(a)), "median": float(pct[0]),
            **{f"p{p}": float(x) for p, x in zip(PERCENTILES, pct, strict=True)},
            "min": min(values), "max": max(values)}


def median_or_none(values: Sequence[float]) -> float | None:
    return percentile(values, 50) if len(values) else None


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def bootstrap_ci(values: Sequence[float], p: float, level: float = CI_LEVEL,
                 resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> Interval | None:
    """The percentile-bootstrap interval of the p-th percentile; None under two values (no
    spread to resample). All values equal give a zero-width interval."""
    a = _array(values)
    if a.size < 2:
        return None
    if np.all(a == a[0]):  # scipy warns on a degenerate sample; the answer is exact anyway
        return Interval(float(a[0]), float(a[0]))
    res = sps.bootstrap((a,), lambda x, axis: np.percentile(x, p, axis=axis, method="linear"),
                        confidence_level=level, n_resamples=resamples, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high))


def intervals(values: Sequence[float]) -> dict[str, list[float] | None]:
    """{"median": [lo, hi], "p99": [lo, hi]} at CI_LEVEL (None where there are too few values)."""
    out: dict[str, list[float] | None] = {}
    for name in CI_STATS:
        ci = bootstrap_ci(values, _STAT_P[name])
        out[name] = None if ci is None else ci.as_list()
    return out


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Across repetitions: n, mean, sample standard deviation (None for one), min and max."""
    if len(values) == 0:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    a = _array(values)
    return {"n": int(a.size), "mean": float(np.mean(a)), "sd": float(np.std(a, ddof=1)) if a.size > 1 else None,
            "min": float(np.min(a)), "max": float(np.max(a))}


def by_repetition(values: Mapping[int, Sequence[float]]) -> dict[str, object]:
    """Each repetition's count, median and P99, and their spread across repetitions."""
    reps = [{"rep": rep, "count": len(vs), "median": percentile(vs, 50), "p99": percentile(vs, 99)}
            for rep, vs in sorted(values.items()) if len(vs)]
    return {"reps": reps,
            **{name: spread([float(r[name]) for r in reps]) for name in CI_STATS}}


def t_interval(values: Sequence[float], level: float = CI_LEVEL) -> Interval | None:
    """Student t interval of the mean; None under two values. Equal values give a zero width."""
    a = _array(values)
    if a.size < 2:
        return None
    m = float(np.mean(a))
    sem = float(sps.sem(a))
    if sem == 0.0:
        return Interval(m, m)
    lo, hi = sps.t.interval(level, a.size - 1, loc=m, scale=sem)
    return Interval(float(lo), float(hi))


def headline(values: Mapping[int, Sequence[float]]) -> dict[str, object]:
    """The median and P99 a report leads with, and their 95% intervals. With two or more
    repetitions that have values: the mean over repetitions of each one's own statistic, t
    interval (basis "repetitions"); else the pooled statistic with its bootstrap interval
    (basis "invocations")."""
    reps = [list(vs) for _, vs in sorted(values.items()) if len(vs)]
    if len(reps) >= 2:
        out: dict[str, object] = {"basis": "repetitions", "n": len(reps)}
        for name in CI_STATS:
            per_rep = [percentile(vs, _STAT_P[name]) for vs in reps]
            ci = t_interval(per_rep)
            out[name] = float(np.mean(per_rep))
            out[f"{name}_ci"] = None if ci is None else ci.as_list()
        return out
    pooled = [v for vs in reps for v in vs]
    out = {"basis": "invocations", "n": len(pooled)}
    for name in CI_STATS:
        out[name] = percentile(pooled, _STAT_P[name]) if pooled else None
        ci = bootstrap_ci(pooled, _STAT_P[name])
        out[f"{name}_ci"] = None if ci is None else ci.as_list()
    return out


def number(v: object) -> float | None:
    """A JSON value as a finite float, or None (booleans are not numbers here)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def error_bar(values: Sequence[float], centre: float) -> tuple[float, float]:
    """(below, above) the centre for an error bar from the bootstrap interval of the median."""
    ci = bootstrap_ci(values, 50)
    return (0.0, 0.0) if ci is None else (max(0.0, centre - ci.low), max(0.0, ci.high - centre))
