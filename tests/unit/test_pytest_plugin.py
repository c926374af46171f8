"""The pytest plugin, run in an inner pytest session with a fake opener (no root, no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.ui import fixture_rules as plugin

pytest_plugins = ("pytester",)
REPO = Path(__file__).resolve().parents[2]

CONFTEST = '''
import contextlib, types
import pytest

OPENED = []

@pytest.fixture(scope="session")
def testbed_opener():
    @contextlib.contextmanager
    def opener(topology, keep):
        OPENED.append((topology.name, len(topology.nodes), keep))
        yield types.SimpleNamespace(name=topology.name, nodes=len(topology.nodes))
        OPENED.append(("down", topology.name))
    return opener

def pytest_sessionfinish(session):
    import json, pathlib
    pathlib.Path("opened.json").write_text(json.dumps(OPENED))
'''


def opened(pytester: pytest.Pytester) -> list[list[object]]:
    import json
    return list(json.loads((pytester.path / "opened.json").read_text()))


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.delenv("CI", raising=False)
    (pytester.path / "testbeds").mkdir()
    for name in ("two-node", "four-node"):
        (pytester.path / "testbeds" / f"{name}.yaml").write_text((REPO / "testbeds" / f"{name}.yaml").read_text())
    pytester.makeconftest(CONFTEST)
    return pytester


def test_readme_example_with_a_test_level_marker_runs(project: pytest.Pytester) -> None:
    project.makepyfile(test_mine='''
import pytest

@pytest.mark.topology("testbeds/two-node.yaml")
def test_mine(testbed):
    assert testbed.nodes == 2
''')
    project.runpytest_inprocess().assert_outcomes(passed=1)
    (up, down) = opened(project)
    assert up[1:] == [2, False] and down[0] == "down"


def test_a_test_level_marker_overrides_the_modules(project: pytest.Pytester) -> None:
    project.makepyfile(test_mix='''
import pytest

pytestmark = pytest.mark.topology("testbeds/two-node.yaml")

def test_a(testbed):
    assert testbed.nodes == 2

@pytest.mark.topology("testbeds/four-node.yaml")
def test_b(testbed):
    assert testbed.nodes == 4

def test_c(testbed):
    assert testbed.nodes == 2
''')
    project.runpytest_inprocess().assert_outcomes(passed=3)
    ups = [o for o in opened(project) if o[0] != "down"]
    assert sorted(int(str(u[1])) for u in ups) == [2, 4]  # one per distinct topology, not one per test


def test_paths_resolve_from_the_test_file_then_the_rootdir(project: pytest.Pytester) -> None:
    sub = project.mkpydir("sub")
    (sub / "local.yaml").write_text((REPO / "testbeds" / "four-node.yaml").read_text())
    (sub / "test_paths.py").write_text('''
import pytest

@pytest.mark.topology("local.yaml")
def test_local(testbed):
    assert testbed.nodes == 4

@pytest.mark.topology("testbeds/two-node.yaml")
def test_root(testbed):
    assert testbed.nodes == 2
''')
    result = project.runpytest_inprocess(str(sub / "test_paths.py"), f"--rootdir={project.path}")
    result.assert_outcomes(passed=2)


def test_keep_and_reuse_options(project: pytest.Pytester) -> None:
    project.makepyfile(test_k='''
import pytest

@pytest.mark.topology("testbeds/two-node.yaml")
def test_k(testbed):
    assert testbed.name == "pt-two-node"
''')
    result = project.runpytest_inprocess("--testbed-keep", "--testbed-reuse")
    result.assert_outcomes(passed=1)
    assert opened(project)[0][2] is True
    result.stdout.fnmatch_lines(["*testbed pt-two-node left up (--testbed-keep)*"])


def test_without_a_marker_it_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(test_none="def test_none(testbed):\n    pass\n")
    result = project.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs @pytest.mark.topology*"])


def test_not_root_skips_outside_ci_and_fails_under_it(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(test_r='''
import pytest

@pytest.mark.topology("testbeds/two-node.yaml")
def test_r(testbed):
    pass
''')
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    project.runpytest_inprocess().assert_outcomes(skipped=1)
    monkeypatch.setenv("CI", "true")
    project.runpytest_inprocess().assert_outcomes(errors=1)


def test_names() -> None:
    assert plugin.testbed_name("two-node", None, False, 123456) == "pt3456-two-node"
    assert plugin.testbed_name("two-node", None, True, 123456) == "pt-two-node"
    assert plugin.testbed_name("two-node", "mine", True, 1) == "mine"
    assert plugin.not_root_outcome(0, {"CI": "1"}) is None
    assert plugin.not_root_outcome(5, {})[0] == "skip"  # type: ignore[index]
    assert plugin.not_root_outcome(5, {"CI": "1"})[0] == "fail"  # type: ignore[index]


def test_a_missing_topology_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(pytest.UsageError, match="not found"):
        plugin.resolve_path("nope.yaml", tmp_path / "test_x.py", tmp_path)
