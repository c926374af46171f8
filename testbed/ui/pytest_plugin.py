"""pytest plugin: write tests against a real testbed.

    @pytest.mark.topology("testbeds/two-node.yaml")
    def test_something(testbed):
        assert testbed.node("node1").run(["uname", "-r"]).ok

The `testbed` fixture brings the topology up (under a per-session name, so it never touches
a researcher's own testbed of the same name) and tears it down after the test module, unless
it was already up before the fixture ran (then it is left as it was found).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.access import node as remote
from testbed.config import topology as topo_mod
from testbed.lifecycle import names, provision
from testbed.lifecycle import state as st


@dataclass
class Testbed:
    __test__ = False  # not a test class, despite the name
    topology: topo_mod.Topology
    state: st.State
    _stack: ExitStack = field(default_factory=ExitStack)
    _nodes: dict[str, remote.GuestNode] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.topology.name

    def node(self, name: str) -> remote.GuestNode:
        if name not in self._nodes:
            ep = provision.endpoint(names.Layout(self.name), self.state.nodes[name])
            self._nodes[name] = self._stack.enter_context(remote.guest(name, ep))
        return self._nodes[name]

    @property
    def nodes(self) -> list[remote.GuestNode]:
        return [self.node(n) for n in self.state.nodes]

    def exec(self, node: str, *argv: str, check: bool = True) -> remote.Result:
        return self.node(node).run(list(argv), check=check)

    def close(self) -> None:
        self._stack.close()
        self._nodes.clear()


def renamed_topology(path: str | Path, name: str, tmp: Path) -> Path:
    """A copy of a topology file under another testbed name."""
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text())
    data["name"] = name
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "topology(path, name=None): the topology the `testbed` fixture brings up")


@pytest.fixture(scope="module")
def testbed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    marker = request.node.get_closest_marker("topology")
    if marker is None:
        raise pytest.UsageError("the `testbed` fixture needs @pytest.mark.topology('FILE')")
    src = Path(marker.args[0])
    base = yaml.safe_load(src.read_text())["name"]
    name = marker.kwargs.get("name") or re.sub(r"[^a-z0-9-]", "", f"pt{os.getpid() % 10000}-{base}")[:20]
    path = renamed_topology(src, name, tmp_path_factory.mktemp("topology"))
    topology = topo_mod.load(path, topo_mod.host_facts())
    with brought_up(topology) as state, contextlib.closing(Testbed(topology, state)) as tb:
        yield tb


Up = Callable[[topo_mod.Topology], tuple[st.State, bool]]


@contextlib.contextmanager
def brought_up(topology: topo_mod.Topology, up: Up | None = None,
               down: Callable[[str], object] | None = None) -> Iterator[st.State]:
    """The testbed of `topology`, up for the body; torn down afterwards only if this call
    created it. A testbed that was already up (a researcher's, or another session's with the
    same name) is used as it is and left up. A failed `up` has rolled back what it made, and
    one refused by the testbed lock made nothing: neither is this call's to tear down."""
    state, created = (up or provision.up)(topology)
    try:
        yield state
    finally:
        if created:
            (down or provision.down)(topology.name)
