"""Arrival patterns as pure functions: a seeded random.Random in, a schedule out.

An open schedule is a list of (offset in seconds from the start of the unit, function) that the
executor fires at those times whatever the latency (open loop); a closed loop is N clients that
each start their next invocation when the previous one returns, until a count or a duration."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from testbed.config.yamlfile import read_regular
from testbed.errors import ConfigError
from testbed.scenario.spec import tokentrace


@dataclass(frozen=True)
class Event:
    offset: float  # seconds from the start of the unit
    function: str


@dataclass(frozen=True)
class OpenLoop:
    events: tuple[Event, ...]  # by offset; equal offsets keep their order


@dataclass(frozen=True)
class ClosedLoop:
    clients: int
    count: int | None  # total over all clients
    duration: float | None  # seconds: no invocation starts after it
    function: str


Schedule = OpenLoop | ClosedLoop


def unit_rng(seed: int, *parts: object) -> random.Random:
    """A generator for one unit of work, independent of the order units run in (so --resume
    replays the same schedule an uninterrupted run would have used)."""
    key = "/".join([str(seed), *(str(p) for p in parts)])
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def fixed(count: int, interval: float, function: str) -> Schedule:
    """count invocations: back to back by one client (interval 0), or one every interval s."""
    if count < 0 or interval < 0:
        raise ValueError("count and interval must not be negative")
    if interval == 0:
        return ClosedLoop(1, count, None, function)
    return OpenLoop(tuple(Event(i * interval, function) for i in range(count)))


def poisson(rate: float, duration: float, rng: random.Random, function: str) -> OpenLoop:
    """A Poisson process of `rate` per second over [0, duration): exponential inter-arrivals."""
    # Finite too: with rate or duration inf this loop never ends (NaN fails every comparison).
    if not (0 < rate < math.inf and 0 < duration < math.inf):
        raise ValueError("rate and duration must be positive and finite")
    events = []
    t = rng.expovariate(rate)
    while t < duration:
        events.append(Event(t, function))
        t += rng.expovariate(rate)
    return OpenLoop(tuple(events))


def closed(clients: int, count: int | None, duration: float | None, function: str) -> ClosedLoop:
    if clients < 1:
        raise ValueError("a closed loop needs at least one client")
    if count is None and duration is None:
        raise ValueError("a closed loop needs a count or a duration")
    return ClosedLoop(clients, count, duration, function)


def replay(trace: tuple[tuple[float, str], ...], speed: float = 1.0, limit: int | None = None) -> OpenLoop:
    """Replay (time, function) events: offsets as recorded (the trace's own zero), divided by
    speed (2.0 replays twice as fast); order kept, also for equal times."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    rows = trace if limit is None else trace[:limit]
    return OpenLoop(tuple(Event(t / speed, fn) for t, fn in rows))


MAX_TRACE_EVENTS = 1_000_000
AZURE2019_HEAD = ("HashOwner", "HashApp", "HashFunction", "Trigger")
AZURE2021_HEAD = ("app", "func", "end_timestamp", "duration")
SHORT = 8  # hex digits of a hash that name an Azure function
_WHOLE = re.compile(r"[0-9]{1,9}")  # ASCII digits only (str.isdigit takes "²")


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(name: str, lineno: int, line: str) -> list[str]:
    try:
        return [c.strip() for c in next(csv.reader(io.StringIO(line)))]
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise ConfigError(name, lineno, "", f"not a CSV row: {exc}") from None


MOONCAKE_NAME = "r{}"  # a Mooncake request's event: r<index in the file>


def load_trace(path: Path, limit: int = 16 << 20, *, seed: int = 0,
               max_events: int = MAX_TRACE_EVENTS) -> tuple[tuple[float, str], ...]:
    """A trace file as (seconds from the trace's zero, function) events in time order. The format
    is told by the header:

      time,function                                  the toolkit's own CSV (e.g. traces/bursty.csv)
      HashOwner,HashApp,HashFunction,Trigger,1,2,... Azure Functions 2019: invocations per minute
      app,func,end_timestamp,duration                Azure Functions 2021: one row per invocation
      {"timestamp": ..., "hash_ids": [...], ...}     Mooncake (JSON lines): request i is an event
                                                     named r<i> (MOONCAKE_NAME), i from 0 in file
                                                     order; the `kv` workload kind reads its tokens

    Azure functions are named by the first 8 hex digits of their hash (aliases map them to
    snapshots). See azure2019 and azure2021 for how their times are made."""
    name = str(path)
    text = read_regular(path, limit, "trace file")
    if text.lstrip().startswith("{"):
        reqs = tokentrace.parse_mooncake(name, text, max_requests=max_events).requests
        return tuple((r.arrival, MOONCAKE_NAME.format(i)) for i, r in enumerate(reqs))
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(name, None, "", "empty trace (expected a header `time,function` and rows)")
    cols = _row(name, lines[0][0], lines[0][1])
    if cols[:len(AZURE2019_HEAD)] == list(AZURE2019_HEAD):
        return azure2019(name, lines, seed, max_events)
    if set(AZURE2021_HEAD) <= set(cols):
        return azure2021(name, lines, max_events)
    if "time" not in cols and "function" not in cols and len(cols) > 1:
        raise ConfigError(name, lines[0][0], "", f"unknown trace format (columns: {_cut(', '.join(cols))}); expected "
                          f"`time,function`, Azure 2019 `{','.join(AZURE2019_HEAD)},1,2,...` or Azure 2021 "
                          f"`{','.join(AZURE2021_HEAD)}`")
    return _plain(name, lines)


def _plain(name: str, lines: list[tuple[int, str]]) -> tuple[tuple[float, str], ...]:
    """The toolkit's CSV: a header naming at least `time` (seconds, non-decreasing) and `function`."""
    header_line, header = lines[0]
    cols = _row(name, header_line, header)
    for col in ("time", "function"):
        if col not in cols:
            raise ConfigError(name, header_line, col, f"the header has no {col!r} column "
                              f"(columns: {_cut(', '.join(cols))})")
    ti, fi = cols.index("time"), cols.index("function")
    out: list[tuple[float, str]] = []
    last = -math.inf
    for lineno, ln in lines[1:]:
        row = _row(name, lineno, ln)
        if len(row) <= max(ti, fi):
            raise ConfigError(name, lineno, "", f"expected {len(cols)} columns, got {len(row)}")
        try:
            t = float(row[ti])
        except ValueError:
            raise ConfigError(name, lineno, "time", f"not a number: {_cut(repr(row[ti]))}") from None
        if not math.isfinite(t) or t < 0:
            raise ConfigError(name, lineno, "time", f"must be a finite number of seconds >= 0, got {_cut(repr(row[ti]))}")
        if t < last:
            raise ConfigError(name, lineno, "time", f"times must not decrease ({t} after {last})")
        if not row[fi]:
            raise ConfigError(name, lineno, "function", "empty function name")
        last = t
        out.append((t, row[fi]))
    if not out:
        raise ConfigError(name, header_line, "", "the trace has a header but no events")
    return tuple(out)


def _short(name: str, names: dict[str, str], full: str, lineno: int, field: str) -> str:
    """The first SHORT hex digits of a function's hash, checked not to stand for two hashes."""
    if not full:
        raise ConfigError(name, lineno, field, "empty function hash")
    short = full[:SHORT]
    if names.setdefault(short, full) != full:
        raise ConfigError(name, lineno, field, f"two functions share the name {short!r} "
                          f"({_cut(names[short], 20)} and {_cut(full, 20)})")
    return short


def azure2019(name: str, lines: list[tuple[int, str]], seed: int = 0,
              max_events: int = MAX_TRACE_EVENTS) -> tuple[tuple[float, str], ...]:
    """Azure Functions 2019 ("Serverless in the Wild", ATC'20): per function a row of invocation
    counts per minute; the minute columns may be any increasing run of minute numbers (a sample
    may keep a window of the day). Minute m's count c becomes c arrivals spread uniformly over
    [m - first, m - first + 1) minutes from a generator seeded by (seed, function hash, minute):
    the same file and seed always give the same trace, in whatever order it is read."""
    header_line, header = lines[0]
    cols = _row(name, header_line, header)
    minutes: list[int] = []
    for c in cols[len(AZURE2019_HEAD):]:
        if not _WHOLE.fullmatch(c):
            raise ConfigError(name, header_line, c, "a minute column must be a minute number (1, 2, ...)")
        if minutes and int(c) <= minutes[-1]:
            raise ConfigError(name, header_line, c, f"minute columns must increase ({c} after {minutes[-1]})")
        minutes.append(int(c))
    if not minutes:
        raise ConfigError(name, header_line, "", "no minute columns after Trigger")
    fi = AZURE2019_HEAD.index("HashFunction")
    names: dict[str, str] = {}
    events: list[tuple[float, int, str]] = []  # (time, row order, function): ties keep the row order
    for order, (lineno, ln) in enumerate(lines[1:]):
        row = _row(name, lineno, ln)
        if len(row) != len(cols):
            raise ConfigError(name, lineno, "", f"expected {len(cols)} columns, got {len(row)}")
        fn = _short(name, names, row[fi], lineno, "HashFunction")
        for minute, cell in zip(minutes, row[len(AZURE2019_HEAD):], strict=True):
            if not _WHOLE.fullmatch(cell):
                raise ConfigError(name, lineno, str(minute), f"invocations in minute {minute} must be a whole number "
                                  f">= 0, got {_cut(repr(cell))}")
            count = int(cell)
            if count == 0:
                continue
            if len(events) + count > max_events:
                raise ConfigError(name, lineno, str(minute), f"the trace has more than {max_events} invocations")
            rng = unit_rng(seed, "azure2019", row[fi], minute)
            base = (minute - minutes[0]) * 60.0
            events.extend((base + 60.0 * x, order, fn) for x in sorted(rng.random() for _ in range(count)))
    if not events:
        raise ConfigError(name, header_line, "", "the trace has no invocations")
    events.sort(key=lambda e: (e[0], e[1]))
    return tuple((t, fn) for t, _, fn in events)


def azure2021(name: str, lines: list[tuple[int, str]],
              max_events: int = MAX_TRACE_EVENTS) -> tuple[tuple[float, str], ...]:
    """Azure Functions 2021: one row per invocation, `end_timestamp` (s from the trace's start)
    and `duration` (s); it arrived at end_timestamp - duration. Rows come ordered by their end,
    so the events are sorted by arrival (ties keep the file's order)."""
    header_line, header = lines[0]
    cols = _row(name, header_line, header)
    at = {c: cols.index(c) for c in AZURE2021_HEAD}
    names: dict[str, str] = {}
    events: list[tuple[float, int, str]] = []
    for order, (lineno, ln) in enumerate(lines[1:]):
        row = _row(name, lineno, ln)
        if len(row) != len(cols):
            raise ConfigError(name, lineno, "", f"expected {len(cols)} columns, got {len(row)}")
        nums: dict[str, float] = {}
        for field in ("end_timestamp", "duration"):
            cell = row[at[field]]
            try:
                nums[field] = float(cell)
            except ValueError:
                raise ConfigError(name, lineno, field, f"not a number: {_cut(repr(cell))}") from None
            if not math.isfinite(nums[field]) or nums[field] < 0:
                raise ConfigError(name, lineno, field, f"must be a finite number of seconds >= 0, got {_cut(repr(cell))}")
        start = nums["end_timestamp"] - nums["duration"]
        if start < 0:
            raise ConfigError(name, lineno, "duration", f"longer than end_timestamp ({nums['duration']} > "
                              f"{nums['end_timestamp']}): it would start before the trace")
        fn = _short(name, names, row[at["func"]], lineno, "func")
        if len(events) >= max_events:
            raise ConfigError(name, lineno, "", f"the trace has more than {max_events} invocations")
        events.append((start, order, fn))
    if not events:
        raise ConfigError(name, header_line, "", "the trace has a header but no events")
    events.sort(key=lambda e: (e[0], e[1]))
    return tuple((t, fn) for t, _, fn in events)
