"""Arrival generators against their parameters (fixed seeds: deterministic, but the
tolerances are the statistical ones, so the checks would hold for any seed with high probability)."""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from pathlib import Path

import pytest

from testbed.errors import ConfigError
from testbed.scenario.kinds.restore import RestoreSpec
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
    assert_trace_error(tmp_path / "t.csv", text, line, field, message)


def assert_trace_error(p: Path, text: str, line: int, field: str, message: str) -> None:
    """A trace with this text is refused with one error naming the file, line and field."""
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        arrivals.load_trace(p)
    assert (info.value.path, info.value.line, info.value.field) == (str(p), line, field)
    assert message in info.value.message


# --- real serverless traces: Azure Functions 2019 (per-minute counts) and 2021 (per invocation) ---

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios" / "traces"
AZ19_HEAD = "HashOwner,HashApp,HashFunction,Trigger"


def test_azure2021_sample_arrivals_are_end_minus_duration() -> None:
    path = SHIPPED / "azure2021-sample.csv"
    trace = arrivals.load_trace(path)
    assert len(trace) == 199 and len({fn for _, fn in trace}) == 31
    times = [t for t, _ in trace]
    assert times == sorted(times) and times[0] >= 0
    # the file's first row: end 0.07949090003967285 s after a 0.078 s run
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = rows[0]
    want = (float(first["end_timestamp"]) - float(first["duration"]), first["func"][:8])
    assert trace[0] == want  # also the earliest arrival
    # every row is one arrival, of its own function
    assert Counter(fn for _, fn in trace) == Counter(r["func"][:8] for r in rows)
    # a long invocation ends late but arrived early: sorted by arrival, not by end
    late = max(rows, key=lambda r: float(r["duration"]))
    start = float(late["end_timestamp"]) - float(late["duration"])
    assert float(late["duration"]) > 50 and (start, late["func"][:8]) in trace


def test_azure2019_sample_spreads_each_minute_over_the_minute() -> None:
    path = SHIPPED / "azure2019-sample.csv"
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    trace = arrivals.load_trace(path, seed=7)
    assert len(trace) == sum(int(c) for r in body for c in r[4:]) == 4525
    times = [t for t, _ in trace]
    assert times == sorted(times) and 0 <= times[0] and times[-1] < 1440 * 60
    # per function and minute, exactly the file's count falls inside that minute
    per = Counter((fn, int(t // 60) + 1) for t, fn in trace)
    for r in body:
        for minute, c in zip(header[4:], r[4:], strict=True):
            assert per.get((r[2][:8], int(minute)), 0) == int(c)
    # reproducible from the seed; another seed moves the times, not the counts
    assert arrivals.load_trace(path, seed=7) == trace
    other = arrivals.load_trace(path, seed=8)
    assert other != trace and Counter(fn for _, fn in other) == Counter(fn for _, fn in trace)


def test_azure2019_window_and_spread(tmp_path: Path) -> None:
    p = tmp_path / "win.csv"
    p.write_text(f"{AZ19_HEAD},10,11,12\no,a,f1,http,0,3,1\no,a,f2,http,2,0,0\n")
    trace = arrivals.load_trace(p)
    # minute 10 is the trace's zero; minute 11's three calls fall in [60, 120)
    assert [fn for _, fn in trace] == ["f2", "f2", "f1", "f1", "f1", "f1"]
    assert all(0 <= t < 60 for t, _ in trace[:2]) and all(60 <= t < 120 for t, _ in trace[2:5])
    assert 120 <= trace[5][0] < 180
    # replayed faster for TCG with speed
    assert arrivals.replay(trace, speed=10).events[-1].offset == pytest.approx(trace[-1][0] / 10)


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    (f"{AZ19_HEAD},1,2\no,a,f,http,1,x\n", 2, "2", "whole number"),
    (f"{AZ19_HEAD},1,2\no,a,f,http,1,-1\n", 2, "2", "whole number"),
    (f"{AZ19_HEAD},1,2\no,a,f,http,1,\u00b2\n", 2, "2", "whole number"),
    (f"{AZ19_HEAD},1,2\no,a,f,http,1\n", 2, "", "expected 6 columns, got 5"),
    (f"{AZ19_HEAD},1,x\no,a,f,http,1,1\n", 1, "x", "minute number"),
    (f"{AZ19_HEAD},2,1\no,a,f,http,1,1\n", 1, "1", "must increase"),
    (f"{AZ19_HEAD}\no,a,f,http\n", 1, "", "no minute columns"),
    (f"{AZ19_HEAD},1\no,a,,http,1\n", 2, "HashFunction", "empty function hash"),
    (f"{AZ19_HEAD},1\no,a,abcdef0123,http,1\no,a,abcdef0199,http,1\n", 3, "HashFunction", "share the name 'abcdef01'"),
    (f"{AZ19_HEAD},1\no,a,f,http,0\n", 1, "", "no invocations"),
    ("app,func,end_timestamp,duration\na,f,1.5,x\n", 2, "duration", "not a number"),
    ("app,func,end_timestamp,duration\na,f,nan,1\n", 2, "end_timestamp", "finite"),
    ("app,func,end_timestamp,duration\na,f,1,-1\n", 2, "duration", ">= 0"),
    ("app,func,end_timestamp,duration\na,f,1,2\n", 2, "duration", "start before the trace"),
    ("app,func,end_timestamp,duration\na,,1,0.5\n", 2, "func", "empty function hash"),
    ("app,func,end_timestamp,duration\na,f,1\n", 2, "", "expected 4 columns, got 3"),
    ("app,func,end_timestamp,duration\n", 1, "", "no events"),
    ("a,b,c\n1,2,3\n", 1, "", "unknown trace format"),
])
def test_azure_trace_errors(tmp_path: Path, text: str, line: int, field: str, message: str) -> None:
    assert_trace_error(tmp_path / "az.csv", text, line, field, message)


def test_azure_trace_size_is_bounded(tmp_path: Path) -> None:
    p = tmp_path / "big.csv"
    p.write_text(f"{AZ19_HEAD},1,2\no,a,f,http,600,600\n")
    with pytest.raises(ConfigError, match="more than 1000 invocations") as info:
        arrivals.load_trace(p, max_events=1000)
    assert (info.value.line, info.value.field) == (2, "2")


def test_azure_replay_scenario_loads() -> None:
    from testbed.scenario.spec import schema

    scn = schema.load(SHIPPED.parent / "azure-replay.yaml")
    (wl,) = scn.workloads
    assert wl.arrival.planned() == 72 and wl.arrival.speed == 5
    sched = wl.arrival.schedule(None, "unused")
    assert isinstance(sched, arrivals.OpenLoop)
    events = sched.events
    assert len(events) == 72 and 55 < events[-1].offset < 65  # about a minute of replay under TCG
    # every function of the whole trace has a snapshot, so --set ...limit=199 works too
    assert isinstance(wl.spec, RestoreSpec)
    aliases = wl.spec.aliases
    assert {fn for _, fn in wl.arrival.trace} <= set(aliases)
