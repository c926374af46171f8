"""What the executor needs from the world, as one typed seam (tests pass fakes):

    open_testbed(topology, keep, progress) -> a context manager of a TestbedHandle: brings the
        testbed up (or attaches to it), reports phases of the bring-up to `progress`, and on exit
        tears down only what it created, unless keep;
    progress(title, nodes) -> a context manager of the PhaseReporter shown during bring-up (the
        UI passes its own; the engine imports nothing of the UI);
    host_facts, host_meta, cxl_paths: read-only facts for validation and meta.json.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console
from tbproto.jsontypes import JsonObject

from testbed.access.node import Node
from testbed.config.topology import HostFacts, Topology
from testbed.lifecycle import cxlpath
from testbed.lifecycle.state import State
from testbed.scenario.kinds.base import Agent
from testbed.scenario.output import results


class PhaseReporter(Protocol):
    def __call__(self, phase: str, message: str) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, title: str, total_nodes: int) -> AbstractContextManager[PhaseReporter]: ...


class TestbedHandle(Protocol):
    """A testbed that is up, for the life of the run."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def topology(self) -> Topology: ...
    @property
    def created(self) -> bool: ...  # brought up by this open (and so torn down on exit unless keep)

    def node(self, name: str) -> Node: ...  # connected; NodeError when it cannot be reached
    def agent(self, name: str) -> Agent: ...  # the node's long-lived agent client
    def keep(self) -> None: ...  # leave it up on exit even if this open brought it up


class OpenTestbed(Protocol):
    def __call__(self, topology: Topology, keep: bool,
                 progress: PhaseReporter) -> AbstractContextManager[TestbedHandle]: ...


def _silent(phase: str, message: str) -> None:
    pass


def quiet(title: str, total_nodes: int) -> AbstractContextManager[PhaseReporter]:
    """A progress factory that shows nothing."""
    return nullcontext(_silent)


@dataclass
class Backend:
    open_testbed: OpenTestbed
    host_facts: Callable[[], HostFacts]
    progress: ProgressFactory = quiet
    host_meta: Callable[[], JsonObject] = results.host_meta  # JSON for meta.json
    cxl_paths: Callable[[State], list[JsonObject]] = cxlpath.read_for_state  # JSON for meta.json
    console: Console = field(default_factory=lambda: Console(stderr=True))
