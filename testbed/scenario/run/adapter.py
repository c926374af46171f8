"""A TestbedHandle over today's functions (provision.up/down, access.node.guest, the agent
session), so the executor runs on the seam before the lifecycle's Testbed object exists; the
CLI's Ops provide the functions. Replace with that object when it lands."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Protocol

from testbed.access.node import Node
from testbed.config.topology import HostFacts, Topology
from testbed.lifecycle import names
from testbed.lifecycle.state import NodeState, State
from testbed.scenario.kinds.base import Agent
from testbed.scenario.run.seam import Backend, OpenTestbed, PhaseReporter, ProgressFactory, TestbedHandle, quiet


class Guest(Node, Protocol):
    def open(self) -> None: ...  # connect now rather than on the first command


class Ops(Protocol):
    """The parts of the CLI's Ops a run uses."""

    @property
    def up(self) -> Callable[[Topology, PhaseReporter], tuple[State, bool]]: ...
    @property
    def down(self) -> Callable[[str], object]: ...
    @property
    def guest(self) -> Callable[[str, object], AbstractContextManager[Guest]]: ...  # (node name, endpoint)
    @property
    def endpoint(self) -> Callable[[names.Layout, NodeState], object]: ...  # an endpoint, passed to guest
    @property
    def host_facts(self) -> Callable[[], HostFacts]: ...
    @property
    def agent_session(self) -> Callable[[Node, float], AbstractContextManager[Agent]]: ...  # (node, timeout)
    @property
    def cxl_paths(self) -> Callable[[State], list[dict[str, Any]]]: ...


AGENT_TIMEOUT = 300.0  # the agent session's default timeout per request


class OpsTestbed:
    """Nodes connected on first use and agents opened on first use, all closed on exit."""

    def __init__(self, ops: Ops, topology: Topology, state: State, created: bool, stack: ExitStack) -> None:
        self.ops, self.topology, self.state, self.created = ops, topology, state, created
        self.stack = stack
        self.layout = names.Layout(topology.name)
        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {}
        self.agents: dict[str, Agent] = {}

    @property
    def name(self) -> str:
        return self.topology.name

    def node(self, name: str) -> Node:
        with self.lock:
            if name not in self.nodes:
                with ExitStack() as opening:
                    guest = opening.enter_context(self.ops.guest(name, self.ops.endpoint(self.layout, self.state.nodes[name])))
                    guest.open()
                    self.stack.push(opening.pop_all())
                self.nodes[name] = guest
            return self.nodes[name]

    def agent(self, name: str) -> Agent:
        node = self.node(name)
        with self.lock:
            if name not in self.agents:
                self.agents[name] = self.stack.enter_context(self.ops.agent_session(node, AGENT_TIMEOUT))
            return self.agents[name]


def opener(ops: Ops) -> OpenTestbed:
    @contextmanager
    def open_testbed(topology: Topology, keep: bool, progress: PhaseReporter) -> Iterator[TestbedHandle]:
        state, created = ops.up(topology, progress)
        with ExitStack() as stack:
            if created and not keep:
                stack.callback(ops.down, topology.name)  # last: after the nodes are closed
            yield OpsTestbed(ops, topology, state, created, stack)

    return open_testbed


def backend(ops: Ops, progress: ProgressFactory = quiet) -> Backend:
    """The executor's seam over the CLI's Ops; agent sessions stay per thread (the agent session
    carries one request at a time)."""
    return Backend(open_testbed=opener(ops), host_facts=ops.host_facts, progress=progress,
                   per_thread_agent=ops.agent_session, cxl_paths=ops.cxl_paths)
