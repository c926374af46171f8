"""The Testbed object without libvirt or root: who tears down what, one cached connection and
one agent session per node, everything closed on leaving; `up`, `down`, the connections and
the agent are fakes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest

from testbed.access.agent import Exchanger
from testbed.access.node import ChannelNode, HostNode, Result, SshEndpoint
from testbed.config.topology import HostFacts, Topology
from testbed.config.topology import load as load_topology
from testbed.errors import Unreachable, UserError
from testbed.lifecycle import state as st
from testbed.lifecycle.testbed import Testbed, agent_session

pytestmark = pytest.mark.unit
TOPOLOGY = "name: tb\nnodes: 2\n"


class FakeNode:
    def __init__(self, name: str, port: int, log: list[str]) -> None:
        self.name, self.port, self.log = name, port, log

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        return Result(self.name, tuple(argv), 0, f"{self.name}\n", "", 0.0)

    def put(self, local: Path, remote: str) -> None:
        pass

    def get(self, remote: str, local: Path) -> None:
        pass

    def open_channel(self, command: str, timeout: float) -> paramiko.Channel:
        raise AssertionError("not used here")


class World:
    """What the fakes did, in order."""

    def __init__(self, created: bool = True) -> None:
        self.created = created
        self.log: list[str] = []
        self.fail_connect: set[str] = set()

    def up(self, topology: Topology, progress: Any) -> tuple[st.State, bool]:
        progress("boot", "fake")
        self.log.append(f"up {topology.name}")
        return _state(), self.created

    def down(self, name: str) -> None:
        self.log.append(f"down {name}")

    @contextlib.contextmanager
    def connect(self, name: str, ep: SshEndpoint) -> Iterator[ChannelNode]:
        if name in self.fail_connect:
            raise Unreachable(f"{name}: cannot connect")
        self.log.append(f"connect {name}:{ep.port}")
        try:
            yield FakeNode(name, ep.port, self.log)
        finally:
            self.log.append(f"close {name}")

    @contextlib.contextmanager
    def agent(self, node: ChannelNode, timeout: float) -> Iterator[Exchanger]:
        self.log.append(f"agent {node.name} {timeout:g}")
        try:
            yield cast(Exchanger, ("agent", node.name))
        finally:
            self.log.append(f"agent closed {node.name}")


def _state() -> st.State:
    s = st.State("tb", "tb.yaml", TOPOLOGY, "x", st.Phase.UP)
    s.nodes = {n: st.NodeState(n, f"cxltb-tb_{n}", 4000 + i, "10.0.0.1/24", ["m"]) for i, n in enumerate(["node0", "node1"])}
    return s


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    f = tmp_path / "tb.yaml"
    f.write_text(TOPOLOGY)
    return load_topology(f, HostFacts(64 << 30, 8))


def _up(world: World, topo: Topology, keep: bool = False) -> contextlib.AbstractContextManager[Testbed]:
    return Testbed.up(topo, keep, up=world.up, down=world.down, connect=world.connect, agent=world.agent)


def test_up_that_created_it_tears_down_after_closing_the_sessions(topo: Topology) -> None:
    world = World(created=True)
    with _up(world, topo) as tb:
        assert tb.created and tb.name == "tb" and tb.topology is topo
        assert tb.node("node1").run(["x"]).stdout == "node1\n"
        assert tb.node("node1") is tb.node("node1")  # one connection per node
        assert tb.exec("node0", "uname").node == "node0"
        assert tb.agent("node0") is tb.agent("node0")
        assert tb.down_seconds is None
    assert world.log == ["up tb", "connect node1:4001", "connect node0:4000", "agent node0 300",
                         "agent closed node0", "close node0", "close node1", "down tb"]
    assert tb.down_seconds is not None and tb.down_seconds >= 0


@pytest.mark.parametrize(("created", "keep"), [(False, False), (True, True), (False, True)])
def test_up_leaves_a_testbed_it_did_not_create_or_was_told_to_keep(topo: Topology, created: bool, keep: bool) -> None:
    world = World(created=created)
    with _up(world, topo, keep) as tb:
        tb.node("node0")
    assert world.log == ["up tb", "connect node0:4000", "close node0"]
    assert tb.down_seconds is None


def test_keep_skips_the_teardown_but_closes_the_sessions(topo: Topology) -> None:
    world = World(created=True)
    with _up(world, topo) as tb:
        tb.node("node0")
        tb.keep()
    assert world.log == ["up tb", "connect node0:4000", "close node0"] and tb.kept


def test_a_failing_body_still_tears_down_and_the_error_propagates(topo: Topology) -> None:
    world = World(created=True)
    with pytest.raises(RuntimeError, match="body"), _up(world, topo) as tb:
        tb.node("node0")
        raise RuntimeError("body")
    assert world.log[-2:] == ["close node0", "down tb"]


def test_a_failed_up_tears_nothing_down(topo: Topology) -> None:
    downs: list[str] = []

    def busy(topology: Topology, progress: Any) -> tuple[st.State, bool]:
        raise UserError("testbed tb is being brought up or down by another process (pid 1)")

    with pytest.raises(UserError), Testbed.up(topo, up=busy, down=downs.append):
        pass
    assert downs == []


def test_the_teardown_runs_even_if_closing_a_session_fails(topo: Topology) -> None:
    world = World(created=True)

    @contextlib.contextmanager
    def connect(name: str, ep: SshEndpoint) -> Iterator[ChannelNode]:
        yield FakeNode(name, ep.port, world.log)
        raise Unreachable(f"{name}: lost while closing")

    with pytest.raises(Unreachable), Testbed.up(topo, up=world.up, down=world.down, connect=connect) as tb:
        tb.node("node0")
    assert world.log[-1] == "down tb"


def test_unknown_node_and_unreachable_node(topo: Topology) -> None:
    world = World()
    world.fail_connect = {"node1"}
    with _up(world, topo) as tb:
        with pytest.raises(UserError, match=r"testbed tb has no node 'node9' \(nodes: node0, node1\)"):
            tb.node("node9")
        with pytest.raises(Unreachable):
            tb.node("node1")
        world.fail_connect = set()
        assert tb.node("node1").name == "node1"  # nothing cached by the failure: tried again


def test_threads_share_one_connection_per_node(topo: Topology) -> None:
    world = World()
    seen: list[ChannelNode] = []
    with _up(world, topo) as tb:
        threads = [threading.Thread(target=lambda: seen.append(tb.node("node0"))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 8 and all(n is seen[0] for n in seen)
    assert world.log.count("connect node0:4000") == 1


def test_attach_never_tears_down_and_reads_the_recorded_topology(topo: Topology) -> None:
    world = World()
    with Testbed.attach("tb", load_state=lambda layout: _state(), connect=world.connect) as tb:
        assert not tb.created and tb.layout.root.name == "tb"
        assert [n.name for n in tb.nodes] == ["node0", "node1"]
        assert [n.name for n in tb.topology.nodes] == ["node0", "node1"]  # parsed from the state's text
    assert world.log == ["connect node0:4000", "connect node1:4001", "close node1", "close node0"]


def test_attach_to_nothing_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no testbed named 'gone'; see `testbed status`"):
        Testbed.attach("gone", load_state=lambda layout: None)


def test_the_agent_needs_a_guest_node() -> None:
    with pytest.raises(Exception, match="guest nodes only"):
        agent_session(FakeNode("node0", 1, []), 1.0)


def test_host_is_a_host_node() -> None:
    tb = Testbed(_state())
    assert isinstance(tb.host, HostNode) and tb.host.run(["true"]).ok
