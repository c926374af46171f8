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
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
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


def load_trace(path: Path) -> tuple[tuple[float, str], ...]:
    """A CSV with a header naming at least `time` (seconds, non-decreasing) and `function`."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, None, "", "trace file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, None, "", f"cannot read: {exc}") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(name, None, "", "empty trace (expected a header `time,function` and rows)")
    header_line, header = lines[0]
    cols = [c.strip() for c in next(csv.reader(io.StringIO(header)))]
    for col in ("time", "function"):
        if col not in cols:
            raise ConfigError(name, header_line, col, f"the header has no {col!r} column (columns: {', '.join(cols)})")
    ti, fi = cols.index("time"), cols.index("function")
    out: list[tuple[float, str]] = []
    last = -math.inf
    for lineno, ln in lines[1:]:
        row = [c.strip() for c in next(csv.reader(io.StringIO(ln)))]
        if len(row) <= max(ti, fi):
            raise ConfigError(name, lineno, "", f"expected {len(cols)} columns, got {len(row)}")
        try:
            t = float(row[ti])
        except ValueError:
            raise ConfigError(name, lineno, "time", f"not a number: {row[ti]!r}") from None
        if not math.isfinite(t) or t < 0:
            raise ConfigError(name, lineno, "time", f"must be a finite number of seconds >= 0, got {row[ti]!r}")
        if t < last:
            raise ConfigError(name, lineno, "time", f"times must not decrease ({t} after {last})")
        if not row[fi]:
            raise ConfigError(name, lineno, "function", "empty function name")
        last = t
        out.append((t, row[fi]))
    if not out:
        raise ConfigError(name, header_line, "", "the trace has a header but no events")
    return tuple(out)
