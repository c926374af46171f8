"""Failures you can debug: a failed `up` keeps its console logs and the log of its run in a
folder its one-line error names; --keep-on-failure leaves the nodes up; a results folder gets
each node's console log and dmesg before the teardown."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed.access.node import ChannelNode, Result, SshEndpoint
from testbed.config.topology import HostFacts, load
from testbed.errors import Interrupted, NodeError, Unreachable
from testbed.lifecycle import names, provision
from testbed.lifecycle import state as st
from testbed.ui import cli, scenario_commands

from .fakenodes import NoChannels


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var, sub in (("CXLTB_STATE_DIR", "state"), ("CXLTB_CACHE_DIR", "cache"), ("CXLTB_SHM_DIR", "shm")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def _state() -> st.State:
    s = st.State("tb", "tb.yaml", "", "x", st.Phase.CREATING)
    s.nodes = {n: st.NodeState(n, f"cxltb-tb_{n}", 4000 + i, "10.0.0.1/24", ["m"]) for i, n in enumerate(["n0", "n1"])}
    return s


def _failing_up(monkeypatch: pytest.MonkeyPatch, exc: BaseException, keep: bool) -> tuple[BaseException, list[str]]:
    swept: list[str] = []
    def sweep(conn: Any, testbed: str) -> list[str]:
        swept.append(testbed)
        return []

    monkeypatch.setattr(provision, "sweep", sweep)
    layout = names.Layout("tb")
    run_log = provision.RunLog()
    caught: BaseException | None = None
    try:  # not pytest.raises: a KeyboardInterrupt escaping it would stop the session
        with provision.transaction(None, layout, _state(), keep_on_failure=keep, run_log=run_log):
            (layout.root / "console").mkdir()
            layout.console("n0").write_text("[    0.0] Linux version 6.12\nKernel panic - not syncing\n")
            run_log.progress(lambda task, msg: None)("boot", "n0 started")
            raise exc
    except BaseException as e:  # the test looks at whatever came out
        caught = e
    assert caught is not None
    return caught, swept


def _folder(exc: BaseException) -> Path:
    (note,) = [n for n in getattr(exc, "__notes__", []) if "kept in" in n]
    return Path(note.rsplit(" ", 1)[1])


def test_a_failed_up_keeps_console_and_run_log_and_names_the_folder(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exc, swept = _failing_up(monkeypatch, NodeError("n0: not ready after 240s"), keep=False)
    assert isinstance(exc, NodeError) and swept == ["tb"]  # the same error, after the rollback
    folder = _folder(exc)
    assert folder.parent == roots / "state" / "failed" and folder.name.startswith("tb-")
    assert "Kernel panic" in (folder / "console-n0.log").read_text()
    run_log = (folder / "run.log").read_text()
    assert "PROGRESS boot: n0 started" in run_log and "NodeError: n0: not ready after 240s" in run_log
    assert '"testbed": "tb"' in (folder / "state.json").read_text()


def test_keep_on_failure_leaves_the_nodes_up(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exc, swept = _failing_up(monkeypatch, NodeError("n0: the VM stopped during boot"), keep=True)
    assert swept == [] and _folder(exc).is_dir()
    assert any("left up (--keep-on-failure)" in n and "testbed down tb" in n for n in exc.__notes__)


def test_ctrl_c_rolls_back_even_with_keep_on_failure(roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exc, swept = _failing_up(monkeypatch, KeyboardInterrupt(), keep=True)
    assert isinstance(exc, Interrupted) and exc.rolled_back and swept == ["tb"]


def test_the_cli_names_the_folder_on_its_one_line(roots: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def up(topo: Any, progress: Any) -> Any:
        exc = NodeError("n0: not ready after 240s")
        exc.add_note("console logs and the log of the run kept in /x/failed/tb-1/")
        raise exc

    f = roots / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    assert cli.main(["up", "-f", str(f)], ops=cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=up)) == 1
    (first,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("testbed: error")]
    assert first == "testbed: error: n0: not ready after 240s; console logs and the log of the run kept in /x/failed/tb-1/"


def test_up_keep_on_failure_flag_picks_the_keeping_up(roots: Path) -> None:
    def fail(topo: Any, progress: Any) -> Any:
        raise AssertionError("--keep-on-failure must use up_keeping")

    f = roots / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    used: list[str] = []

    def keeping(topo: Any, progress: Any) -> tuple[st.State, bool]:
        used.append(topo.name)
        return _state(), True

    ops = cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=fail, up_keeping=keeping)
    assert cli.main(["up", "--keep-on-failure", "-f", str(f)], ops=ops) == 0
    assert used == ["tb"]


class DmesgGuest(NoChannels):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        self.events.append(f"{self.name} {' '.join(argv)}")
        if self.name == "n1":
            raise Unreachable("n1: cannot connect to 127.0.0.1:4001")
        return Result(self.name, tuple(argv), 0, f"[    0.1] {self.name} booted\n", "", 0.0)


def test_results_get_each_nodes_console_and_dmesg_before_the_teardown(roots: Path) -> None:
    events: list[str] = []
    layout = names.Layout("tb")
    (layout.root / "console").mkdir(parents=True)
    layout.console("n0").write_text("n0 console\n")

    @contextlib.contextmanager
    def connect(name: str, ep: SshEndpoint) -> Iterator[ChannelNode]:
        yield DmesgGuest(name, events)

    def down(name: str) -> list[str]:
        events.append(f"down {name}")
        return []

    ops = cli.Ops(up=lambda topo, progress: (_state(), True), down=down, connect=connect)
    out = roots / "results"
    out.mkdir()
    f = roots / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    with scenario_commands.capturing(ops, out)(load(f, HostFacts(64 << 30, 8)), False, lambda phase, msg: None):
        events.append("run")
    assert events == ["run", "n0 dmesg", "n1 dmesg", "down tb"]
    assert (out / "nodes/n0/console.log").read_text() == "n0 console\n"
    assert (out / "nodes/n0/dmesg.txt").read_text() == "[    0.1] n0 booted\n"
    assert "not captured" in (out / "nodes/n1/console.log").read_text()
    assert "not captured: n1: cannot connect" in (out / "nodes/n1/dmesg.txt").read_text()
