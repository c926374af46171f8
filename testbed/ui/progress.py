"""Progress on the terminal: rich bars, one per phase of a long operation (kernel, image, boot,
ready). A PhaseProgress is the (phase, message) callback provision.up and the builders take."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

log = logging.getLogger("testbed")
PER_NODE = ("boot", "ready")  # phases that advance once per node
# The one stderr console: the bars, the log lines (a RichHandler on it) and the CLI's messages
# share it, so a log line is printed above the bars instead of tearing them.
ERR = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class PhaseProgress:
    """rich progress bars, one per phase of a long operation (kernel, image, boot, ready)."""

    def __init__(self, title: str, total_nodes: int, console: Console | None = None) -> None:
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=console or ERR,
                             transient=False)
        self.title = title
        self.total_nodes = total_nodes
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> PhaseProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:  # done: the last one-shot phase (e.g. "network") is done too
            self._complete_one_shot()
        self.bars.__exit__(None, None, None)

    def _complete_one_shot(self) -> None:
        for phase, tid in self.tasks.items():
            task = self.bars.tasks[tid]
            if phase not in PER_NODE and task.total is not None:
                self.bars.update(tid, completed=task.total)

    def __call__(self, phase: str, message: str) -> None:
        log.debug("%s: %s", phase, message)
        per_node = phase in PER_NODE
        if phase not in self.tasks:
            # A new phase means the one-shot phases before it are done (a per-node phase counts
            # its nodes itself), whatever kind the new phase is: "network" is followed by "boot".
            self._complete_one_shot()
            total = self.total_nodes if per_node else 1
            self.tasks[phase] = self.bars.add_task(f"{self.title}: {phase}", total=total)
        tid = self.tasks[phase]
        self.bars.update(tid, description=f"{self.title}: {phase}: {message}",
                         advance=1 if per_node else 0)
