"""Memory of the nodes a unit runs on: /proc/meminfo read before, during (every
memory_interval, from a thread) and after the measured invocations."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from tbproto import meminfo as proc_meminfo

from testbed.access.node import Node
from testbed.errors import NodeError
from testbed.scenario.kinds.base import Failure

MEMORY_TIMEOUT = 30.0


def meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: kB}: the one parser the agent uses too."""
    return proc_meminfo.parse(text)


@dataclass(frozen=True)
class Memory:
    total_kb: int
    available_kb: int

    @property
    def used_kb(self) -> int:
        return self.total_kb - self.available_kb


def read(node: Node) -> Memory:
    """The node's memory now; Failure when the node cannot tell."""
    try:
        r = node.run(["cat", "/proc/meminfo"], check=False, timeout=MEMORY_TIMEOUT)
    except NodeError as exc:
        raise Failure(str(exc)) from exc
    except Exception as exc:
        raise Failure(f"{node.name}: reading /proc/meminfo: {exc or type(exc).__name__}") from exc
    info = meminfo(r.stdout)
    if "MemTotal" not in info or "MemAvailable" not in info:
        raise Failure(f"{node.name}: /proc/meminfo unreadable (exit code {r.exit_code})")
    return Memory(info["MemTotal"], info["MemAvailable"])


class Sampler:
    """Calls sample() every interval from a thread until the with-block ends or stop is set; a
    Failure goes to on_failure (the run stops) rather than vanishing with the thread."""

    def __init__(self, interval: float, sample: Callable[[], None], stop: threading.Event,
                 on_failure: Callable[[Failure], None]) -> None:
        self.interval, self.sample, self.stop, self.on_failure = interval, sample, stop, on_failure
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        if self.interval > 0:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.done.set()
        if self.thread is not None and et is None:  # on an error, do not wait for a node that hangs
            self.thread.join(MEMORY_TIMEOUT + 5)

    def _loop(self) -> None:
        while not self.done.wait(self.interval) and not self.stop.is_set():
            try:
                self.sample()
            except Failure as exc:
                self.on_failure(exc)
                return

