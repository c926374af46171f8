"""What one unit's clients hold on each node: the kind's session, opened on first use by each
thread and closed together at the unit's end.

Sessions are per (thread, node) because today's agent session carries one request at a time;
a Target whose agent opener hands out the testbed's shared, multiplexed client makes them cheap
(nothing is opened per thread then)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import ExitStack

from testbed.scenario.kinds.base import AnyKind, Target


class Sessions:
    def __init__(self, kind: AnyKind, targets: Mapping[str, Target], timeout: float) -> None:
        self.kind, self.targets, self.timeout = kind, targets, timeout
        self.local = threading.local()
        self.stack = ExitStack()
        self.lock = threading.Lock()

    def get(self, node: str) -> object:  # the kind's session type (a Node, an Agent, ...)
        held: dict[str, object] = self.local.__dict__.setdefault("held", {})
        if node not in held:
            with ExitStack() as opening:
                held[node] = opening.enter_context(self.kind.session(self.targets[node], self.timeout))
                with self.lock:
                    self.stack.push(opening.pop_all())
        return held[node]

    def close(self) -> None:
        with self.lock:
            self.stack.close()
