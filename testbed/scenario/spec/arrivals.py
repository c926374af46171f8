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
from dataclasses import dataclass
from pathlib import Path

from testbed.config.yamlfile import read_regular
from testbed.errors import ConfigError


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


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(name: str, lineno: int, line: str) -> list[str]:
    try:
        return [c.strip() for c in next(csv.reader(io.StringIO(line)))]
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise ConfigError(name, lineno, "", f"not a CSV row: {exc}") from None


def load_trace(path: Path, limit: int = 16 << 20) -> tuple[tuple[float, str], ...]:
    """A CSV with a header naming at least `time` (seconds, non-decreasing) and `function`."""
    name = str(path)
    text = read_regular(path, limit, "trace file")
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(name, None, "", "empty trace (expected a header `time,function` and rows)")
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
