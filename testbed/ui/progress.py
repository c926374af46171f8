"""Progress on the terminal: rich bars, one per phase of a long operation (kernel, image, boot,
ready). A PhaseProgress is the (phase, message) callback provision.up and the builders take."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

log = logging.getLogger("testbed")
PER_NODE = ("boot", "ready")  # phases that advance once per node


class PhaseProgress:
    """rich progress bars, one per phase of a long operation (kernel, image, boot, ready)."""

    def __init__(self, title: str, total_nodes: int, console: Console | None = None) -> None:
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=console or Console(stderr=True),
                             transient=False)
        self.title = title
        self.total_nodes = total_nodes
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> PhaseProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(None, None, None)

    def __call__(self, phase: str, message: str) -> None:
        log.debug("%s: %s", phase, message)
        per_node = phase in PER_NODE
        if phase not in self.tasks:
            for tid in self.tasks.values():  # a new phase means the earlier ones are done
                task = self.bars.tasks[tid]
                if task.total is not None and not per_node:
                    self.bars.update(tid, completed=task.total)
            total = self.total_nodes if per_node else 1
            self.tasks[phase] = self.bars.add_task(f"{self.title}: {phase}", total=total)
        tid = self.tasks[phase]
        self.bars.update(tid, description=f"{self.title}: {phase}: {message}",
                         advance=1 if per_node else 0)
