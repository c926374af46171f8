"""pytest plugin: write tests against a real testbed.

    @pytest.mark.topology("testbeds/two-node.yaml")
    def test_something(testbed):
        assert testbed.node("node1").run(["uname", "-r"]).ok

The `testbed` fixture brings the topology up (under a per-session name, so it never touches
a researcher's own testbed of the same name) and tears it down after the test module, unless
it was already up before the fixture ran (then it is left as it was found). It is a thin layer
over testbed.lifecycle.testbed.Testbed; import that, not this module, to use it elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testbed.config import topology as topo_mod
from testbed.lifecycle.testbed import Testbed


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
    path = topo_mod.renamed_topology(src, name, tmp_path_factory.mktemp("topology"))
    with Testbed.up(topo_mod.load(path, topo_mod.host_facts())) as tb:
        yield tb
