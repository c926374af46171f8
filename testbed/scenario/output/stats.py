"""Summary statistics. Percentiles use linear interpolation between closest ranks
(Hyndman and Fan type 7, numpy's default): for sorted x[0..n-1] and p in [0, 100],
h = (n - 1) * p / 100 and P = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h])."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside [0, 100]")
    xs = sorted(values)
    h = (len(xs) - 1) * p / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, median, p50, p90, p99, min and max; None for each but count when empty."""
    if not values:
        return {"count": 0, "mean": None, "median": None, **{f"p{p}": None for p in PERCENTILES},
                "min": None, "max": None}
    return {"count": len(values), "mean": mean(values), "median": percentile(values, 50),
            **{f"p{p}": percentile(values, p) for p in PERCENTILES}, "min": min(values), "max": max(values)}


def median_or_none(values: Sequence[float]) -> float | None:
    return percentile(values, 50) if values else None
