"""pytest plugin: write tests against a real testbed.

    @pytest.mark.topology("testbeds/two-node.yaml")
    def test_something(testbed):
        assert testbed.node("node1").run(["uname", "-r"]).ok

The marker may sit on the test, its class or its module (`pytestmark`); the closest wins. A
relative path is taken from the test file's folder, then from pytest's rootdir. Each distinct
topology a module asks for is brought up once for that module (the fixture is parametrized
per test by its topology, module-scoped), under a per-session name so that it never touches a
researcher's own testbed of the same name, and torn down after the module, unless it was
already up before the fixture ran (then it is left as it was found).

    --testbed-keep    leave the testbeds up after the session (their names are printed)
    --testbed-reuse   use a fixed name per topology (pt-NAME), so a testbed kept by an
                      earlier run is attached to instead of booted again

Not root, the fixture skips its tests, unless the CI variable is set: then it fails them (CI
must not go green on tests it never ran). It is a thin layer over
testbed.lifecycle.testbed.Testbed; import that, not this module, to use it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import yaml

from testbed.config import topology as topo_mod
from testbed.lifecycle import testbed as lifecycle
from testbed.lifecycle.testbed import Testbed
from testbed.ui.fixture_rules import TopologyRequest, not_root_outcome, request_for, testbed_name

KEPT = pytest.StashKey[list[str]]()
Opener = Callable[[topo_mod.Topology, bool], AbstractContextManager[lifecycle.Testbed]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed", "cxl-testbed fixture")
    group.addoption("--testbed-keep", action="store_true", help="leave the fixture's testbeds up after the session")
    group.addoption("--testbed-reuse", action="store_true",
                    help="fixed testbed names per topology, so a testbed left up (--testbed-keep) is reused")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "topology(path, name=None): the topology the `testbed` fixture brings up")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "testbed" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("topology")
    if marker is None:
        return  # the fixture says what is missing when the test runs
    req = request_for(marker, Path(metafunc.definition.path), Path(metafunc.config.rootpath))
    metafunc.parametrize("testbed", [req], indirect=True, scope="module", ids=[req.id])


@pytest.fixture(scope="session")
def testbed_opener() -> Opener:
    """How the fixture brings a testbed up (override it in a conftest to fake one)."""
    return lambda topology, keep: Testbed.up(topology, keep)


@pytest.fixture(scope="module")
def testbed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            testbed_opener: Opener) -> Iterator[lifecycle.Testbed]:
    req = getattr(request, "param", None)
    if not isinstance(req, TopologyRequest):
        raise pytest.UsageError("the `testbed` fixture needs @pytest.mark.topology('FILE') on the test, class or module")
    outcome = not_root_outcome(os.geteuid(), os.environ)
    if outcome is not None:
        kind, reason = outcome
        if kind == "fail":
            pytest.fail(reason)
        pytest.skip(reason)
    config = request.config
    keep = bool(config.getoption("testbed_keep"))
    base = yaml.safe_load(req.path.read_text())["name"]
    name = testbed_name(str(base), req.name, bool(config.getoption("testbed_reuse")), os.getpid())
    path = topo_mod.renamed_topology(req.path, name, tmp_path_factory.mktemp("topology"))
    with testbed_opener(topo_mod.load(path, topo_mod.host_facts()), keep) as tb:
        yield tb
    if keep:
        config.stash.setdefault(KEPT, []).append(tb.name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    kept: list[str] = config.stash.get(KEPT, [])
    for name in dict.fromkeys(kept):
        terminalreporter.write_line(f"testbed {name} left up (--testbed-keep): `testbed down {name}` removes it")
