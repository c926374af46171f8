"""Arrival generators against their parameters (fixed seeds: deterministic, but the
tolerances are the statistical ones, so the checks would hold for any seed with high probability)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest

from testbed.errors import ConfigError
from testbed.scenario.spec import arrivals

RATE = 5.0
DURATION = 4000.0  # about 20 000 arrivals


def _poisson_pmf(k: int, lam: float) -> float:
    return math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poisson_mean_interarrival_and_count(seed: int) -> None:
    events = arrivals.poisson(RATE, DURATION, arrivals.unit_rng(seed, "m", "w", 0), "f").events
    n = len(events)
    # The count is Poisson(rate * duration): within 4 standard deviations.
    assert abs(n - RATE * DURATION) < 4 * math.sqrt(RATE * DURATION)
    gaps = [b.offset - a.offset for a, b in itertools.pairwise(events)]
    mean = sum(gaps) / len(gaps)
    # Exponential gaps: the mean has standard deviation (1/rate)/sqrt(n).
    assert abs(mean - 1 / RATE) < 4 * (1 / RATE) / math.sqrt(len(gaps))
    assert all(0 <= e.offset < DURATION for e in events)
    assert [e.offset for e in events] == sorted(e.offset for e in events)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poisson_gaps_are_exponential_ks(seed: int) -> None:
    events = arrivals.poisson(RATE, DURATION, arrivals.unit_rng(seed, "ks"), "f").events
    gaps = sorted(b.offset - a.offset for a, b in itertools.pairwise(events))
    n = len(gaps)
    d = max(max((i + 1) / n - (1 - math.exp(-RATE * g)), (1 - math.exp(-RATE * g)) - i / n) for i, g in enumerate(gaps))
    assert d < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov critical value at the 1% level


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poisson_counts_per_window_chi_square(seed: int) -> None:
    events = arrivals.poisson(RATE, DURATION, arrivals.unit_rng(seed, "chi"), "f").events
    windows = Counter(int(e.offset) for e in events)  # 1 s windows
    counts = Counter(windows.get(w, 0) for w in range(int(DURATION)))
    # Bins k = 0..10 and "11 or more"; every expected count is above 5.
    observed = [counts.get(k, 0) for k in range(11)] + [sum(v for k, v in counts.items() if k >= 11)]
    probs = [_poisson_pmf(k, RATE) for k in range(11)]
    probs.append(1 - sum(probs))
    expected = [p * DURATION for p in probs]
    assert min(expected) > 5
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    assert chi2 < 31.26  # chi-square with 11 degrees of freedom, 0.1% upper tail
    # Index of dispersion of window counts: 1 for a Poisson process.
    xs = [windows.get(w, 0) for w in range(int(DURATION))]
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    assert abs(var / m - 1) < 4 * math.sqrt(2 / (len(xs) - 1))


def test_unit_rng_is_per_unit_and_reproducible() -> None:
    a = arrivals.poisson(2, 10, arrivals.unit_rng(7, "m", "w", 0), "f")
    assert a == arrivals.poisson(2, 10, arrivals.unit_rng(7, "m", "w", 0), "f")
    assert a != arrivals.poisson(2, 10, arrivals.unit_rng(7, "m", "w", 1), "f")
    assert a != arrivals.poisson(2, 10, arrivals.unit_rng(8, "m", "w", 0), "f")


def test_fixed_and_closed() -> None:
    assert arrivals.fixed(3, 0, "f") == arrivals.ClosedLoop(1, 3, None, "f")
    assert arrivals.fixed(3, 0.5, "f") == arrivals.OpenLoop(tuple(arrivals.Event(t, "f") for t in (0.0, 0.5, 1.0)))
    assert arrivals.closed(4, None, 10.0, "f") == arrivals.ClosedLoop(4, None, 10.0, "f")
    with pytest.raises(ValueError):
        arrivals.closed(2, None, None, "f")
    with pytest.raises(ValueError):
        arrivals.poisson(0, 10, arrivals.unit_rng(1), "f")


TRACE = ((0.0, "a"), (0.25, "b"), (0.25, "c"), (1.5, "a"), (7.125, "d"))


def test_trace_replay_keeps_offsets_and_order() -> None:
    s = arrivals.replay(TRACE)
    assert [(e.offset, e.function) for e in s.events] == list(TRACE)  # equal times keep file order
    fast = arrivals.replay(TRACE, speed=2.0)
    assert [e.offset for e in fast.events] == [t / 2 for t, _ in TRACE]
    assert [e.function for e in fast.events] == [f for _, f in TRACE]
    gaps = [b.offset - a.offset for a, b in zip(s.events, s.events[1:], strict=False)]
    assert gaps == [b - a for (a, _), (b, _) in itertools.pairwise(TRACE)]
    assert len(arrivals.replay(TRACE, limit=2).events) == 2
    with pytest.raises(ValueError):
        arrivals.replay(TRACE, speed=0)


def test_load_trace(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("# a comment\nfunction,time,extra\na,0,x\nb,0.5,y\n\nc,0.5,z\n")
    assert arrivals.load_trace(p) == ((0.0, "a"), (0.5, "b"), (0.5, "c"))


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ("t,function\n0,a\n", 1, "time", "no 'time' column"),
    ("time,function\nx,a\n", 2, "time", "not a number"),
    ("time,function\n1,a\n0.5,b\n", 3, "time", "must not decrease"),
    ("time,function\n-1,a\n", 2, "time", ">= 0"),
    ("time,function\n1,\n", 2, "function", "empty function name"),
    ("time,function\n", 1, "", "no events"),
])
def test_load_trace_errors(tmp_path: Path, text: str, line: int, field: str, message: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        arrivals.load_trace(p)
    assert (info.value.path, info.value.line, info.value.field) == (str(p), line, field)
    assert message in info.value.message
