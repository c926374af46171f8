"""A testbed's lifetime as one object.

    with Testbed.up(topology, progress=progress) as tb:   # brings it up, or attaches if already up
        tb.node("node1").run(["uname", "-r"])
        tb.agent("node0").request("ping")
    # torn down here only if this `up` created it (and keep=False)

    with Testbed.attach("two-node") as tb:                 # one that is up; never torn down
        ...

Connections are made lazily, one per node, shared by every caller (threads included), and
closed when the object is left. `up` and `down` are injected so unit tests need no root."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, Self

from testbed.access import node as remote
from testbed.config import topology as topo_mod
from testbed.errors import NodeError, UserError
from testbed.lifecycle import names, provision
from testbed.lifecycle import state as st

if TYPE_CHECKING:
    from testbed.access.agent import Exchanger

Up = Callable[[topo_mod.Topology, provision.Progress], tuple[st.State, bool]]
Down = Callable[[str], object]
# (node name, endpoint) -> the node, open for as long as the context lasts
Connect = Callable[[str, remote.SshEndpoint], AbstractContextManager[remote.ChannelNode]]
AgentFactory = Callable[[remote.ChannelNode, float], AbstractContextManager["Exchanger"]]
LoadState = Callable[[names.Layout], st.State | None]
AGENT_TIMEOUT = 300.0  # seconds a reply of the agent may take


@contextlib.contextmanager
def connect_guest(name: str, endpoint: remote.SshEndpoint) -> Iterator[remote.ChannelNode]:
    """The real nodes: an SSH session, connected at once so a dead node fails here, not later."""
    with remote.guest(name, endpoint) as node:
        node.open()
        yield node


def agent_session(node: remote.ChannelNode, timeout: float) -> AbstractContextManager[Exchanger]:
    # Imported here: the agent client is the access layer's business and changes apart from this.
    from testbed.access.agent import AgentClient

    if not isinstance(node, remote.GuestNode):
        raise NodeError(f"{node.name}: the agent runs on guest nodes only")
    return AgentClient(node, timeout)


class Testbed:
    """A testbed that is up: its state, topology, nodes and agent sessions."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, state: st.State, *, topology: topo_mod.Topology | None = None,
                 connect: Connect = connect_guest, agent: AgentFactory = agent_session,
                 agent_timeout: float = AGENT_TIMEOUT, created: bool = False) -> None:
        self.state = state
        self.created = created  # whether the `up` that made this object brought the testbed up
        self.down_seconds: float | None = None  # how long the teardown took, once it ran
        self.kept = False  # keep() was called: the teardown `up` would do is skipped
        self._topology = topology
        self._connect = connect
        self._agent = agent
        self._agent_timeout = agent_timeout
        self._stack = ExitStack()
        self._nodes: dict[str, remote.ChannelNode] = {}
        self._agents: dict[str, Exchanger] = {}
        self._lock = threading.Lock()  # guards the dicts and the stack, never held while connecting
        self._opening: dict[str, threading.Lock] = {}  # one per node or agent: connect each once

    # --- lifetime -------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def up(cls, topology: topo_mod.Topology, keep: bool = False, *, progress: provision.Progress | None = None,
           up: Up | None = None, down: Down | None = None, connect: Connect = connect_guest,
           agent: AgentFactory = agent_session) -> Iterator[Self]:
        """The testbed of `topology`, up for the body. Torn down afterwards only if this call
        created it and keep is False: one that was already up (a researcher's, or another
        session's of the same name) is used as it is and left up. A failed `up` has rolled
        back what it made, and one refused by the testbed lock made nothing: neither is this
        call's to tear down."""
        state, created = (up or provision.up)(topology, progress or provision.noprogress)
        tb = cls(state, topology=topology, connect=connect, agent=agent, created=created)
        with ExitStack() as stack:
            if created and not keep:
                stack.callback(tb._teardown_unless_kept, down or provision.down)
            stack.enter_context(tb)  # sessions close before the teardown
            yield tb

    @classmethod
    def attach(cls, name: str, *, load_state: LoadState = st.load, connect: Connect = connect_guest,
               agent: AgentFactory = agent_session) -> Self:
        """A testbed that is already up; leaving it closes the sessions and nothing else."""
        state = load_state(names.Layout(name))
        if state is None:
            raise UserError(f"no testbed named {name!r}; see `testbed status`")
        return cls(state, connect=connect, agent=agent)

    def keep(self) -> None:
        """Leave the testbed up when the context ends, even if this call brought it up (a run
        that failed under --keep-on-failure)."""
        self.kept = True

    def _teardown_unless_kept(self, down: Down) -> None:
        if self.kept:
            return
        t0 = time.monotonic()
        down(self.name)
        self.down_seconds = time.monotonic() - t0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every session and connection; the testbed itself stays as it is."""
        with self._lock:
            self._agents.clear()
            self._nodes.clear()
            self._stack.close()

    # --- what it holds ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.state.testbed

    @property
    def layout(self) -> names.Layout:
        return names.Layout(self.name)

    @property
    def topology(self) -> topo_mod.Topology:
        if self._topology is None:  # attached: the topology text the state recorded at `up`
            self._topology = topo_mod.load(self.state.topology_file, None, text=self.state.topology_text)
        return self._topology

    @property
    def host(self) -> remote.HostNode:
        return remote.HostNode()

    def _once(self, key: str) -> threading.Lock:
        with self._lock:
            return self._opening.setdefault(key, threading.Lock())

    def _keep_open(self, opened: ExitStack) -> None:
        with self._lock:
            self._stack.enter_context(opened.pop_all())

    def node(self, name: str) -> remote.ChannelNode:
        """The node's connection, made on first use; threads connecting to different nodes
        do so in parallel, and the same node is connected once."""
        if name not in self.state.nodes:
            raise UserError(f"testbed {self.name} has no node {name!r} (nodes: {', '.join(self.state.nodes)})")
        with self._once(f"node {name}"):
            if name not in self._nodes:
                endpoint = provision.endpoint(self.layout, self.state.nodes[name])
                with ExitStack() as opened:
                    node = opened.enter_context(self._connect(name, endpoint))
                    self._nodes[name] = node
                    self._keep_open(opened)
            return self._nodes[name]

    @property
    def nodes(self) -> list[remote.ChannelNode]:
        return [self.node(n) for n in self.state.nodes]

    def exec(self, node: str, *argv: str, check: bool = True) -> remote.Result:
        return self.node(node).run(list(argv), check=check)

    def agent(self, name: str) -> Exchanger:
        """The node's one long-lived agent session, opened on first use."""
        node = self.node(name)
        with self._once(f"agent {name}"):
            if name not in self._agents:
                with ExitStack() as opened:
                    session = opened.enter_context(self._agent(node, self._agent_timeout))
                    self._agents[name] = session
                    self._keep_open(opened)
            return self._agents[name]
