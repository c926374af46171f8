"""The run's progress bars: one per set-up phase and per unit; without a display (None) every
call does nothing, so the executor need not ask."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["Bars", "TaskID"]


class Bars:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @classmethod
    @contextmanager
    def shown(cls, console: Console) -> Iterator[Bars]:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            yield cls(progress)

    def task(self, description: str, total: int | None) -> TaskID | None:
        return self.progress.add_task(escape(description), total=total) if self.progress is not None else None

    def advance(self, task: TaskID | None, n: int = 1) -> None:
        if self.progress is not None and task is not None:
            self.progress.advance(task, n)

    def finish(self, task: TaskID | None, note: str = "") -> None:
        """Mark the task done, or failed/stopped with a note in red."""
        if self.progress is None or task is None:
            return
        t = next(x for x in self.progress.tasks if x.id == task)
        final = t.total if t.total is not None else max(t.completed, 1)
        if note:
            self.progress.update(task, description=f"{t.description} [red]{note}[/]", total=final)
        else:
            self.progress.update(task, total=final, completed=final)
