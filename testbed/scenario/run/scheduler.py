"""When invocations start: open-loop arrivals fired on time by a dispatcher into a worker pool,
closed-loop clients as threads. What one invocation does is the caller's `call`; it must not
raise (the executor's guard records a failure and sets `stop`)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from testbed.scenario.spec import arrivals


class Call(Protocol):
    def __call__(self, node: str, seq: int, client: int, function: str, scheduled: float | None) -> None: ...


def open_loop(events: Sequence[arrivals.Event], invoke_on: Sequence[str], max_inflight: int,
              stop: threading.Event, call: Call, started: Callable[[float], None]) -> None:
    """Fire event i at its offset from the start on node i mod len(invoke_on), at most
    max_inflight at once; started(t0) gets the monotonic start the offsets count from."""
    if not events:
        return
    pool = ThreadPoolExecutor(max_workers=min(max_inflight, len(events)))
    try:
        t0 = time.monotonic()
        started(t0)
        for i, ev in enumerate(events):
            at = t0 + ev.offset
            delay = at - time.monotonic()
            if (delay > 0 and stop.wait(delay)) or stop.is_set():
                break
            pool.submit(call, invoke_on[i % len(invoke_on)], i, -1, ev.function, at)
        pool.shutdown(wait=True)
    except BaseException:  # Ctrl-C: stop dispatching, do not wait for calls in flight
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def closed_loop(loop: arrivals.ClosedLoop, invoke_on: Sequence[str], stop: threading.Event, call: Call,
                started: Callable[[float], None]) -> None:
    """loop.clients clients, client c on node c mod len(invoke_on), each invoking as soon as its
    previous call returned, until loop.count calls in all or loop.duration is over."""
    issued = itertools.count()
    t0 = time.monotonic()
    started(t0)
    deadline = t0 + loop.duration if loop.duration is not None else None

    def client(c: int) -> None:
        node = invoke_on[c % len(invoke_on)]
        while not stop.is_set():
            seq = next(issued)
            if loop.count is not None and seq >= loop.count:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            call(node, seq, c, loop.function, None)

    pool = ThreadPoolExecutor(max_workers=loop.clients)
    try:
        for c in range(loop.clients):
            pool.submit(client, c)
        pool.shutdown(wait=True)
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
