from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed.access.node import ChannelNode, Result, SshEndpoint
from testbed.lifecycle import state as st
from testbed.ui import cli

from .fakenodes import NoChannels


class FakeGuest(NoChannels):
    def __init__(self, name: str, codes: dict[str, int]) -> None:
        self.name = name
        self.codes = codes

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        return Result(self.name, tuple(argv), self.codes[self.name], f"out of {self.name}\n", "", 0.0)


def _state() -> st.State:
    s = st.State("tb", "tb.yaml", "", "x", st.Phase.UP)
    s.nodes = {n: st.NodeState(n, f"cxltb-tb_{n}", 4000 + i, "10.0.0.1/24", ["m"]) for i, n in enumerate(["n0", "n1"])}
    return s


def _ops(codes: dict[str, int], calls: list[Any] | None = None) -> cli.Ops:
    @contextlib.contextmanager
    def connect(name: str, ep: SshEndpoint) -> Iterator[ChannelNode]:
        yield FakeGuest(name, codes)

    def execv(path: str, argv: list[str]) -> None:
        assert calls is not None
        calls.append(argv)

    return cli.Ops(known=lambda root: ["tb"], load_state=lambda layout: _state(), connect=connect, execv=execv)


def test_exec_all_runs_every_node_and_fails_if_one_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["exec", "all", "--", "true"], ops=_ops({"n0": 0, "n1": 3})) == 3
    cap = capsys.readouterr()
    assert "n0 | out of n0" in cap.out and "n1 | out of n1" in cap.out
    assert "n1: exit code 3" in cap.err


def test_exec_all_ok() -> None:
    assert cli.main(["exec", "all", "--", "uname", "-r"], ops=_ops({"n0": 0, "n1": 0})) == 0


def test_exec_unknown_node_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["exec", "n9", "--", "true"], ops=_ops({})) == 2
    assert capsys.readouterr().err.strip() == "testbed: error: testbed tb has no node 'n9' (nodes: n0, n1, all)"


def test_exec_needs_a_command() -> None:
    assert cli.main(["exec", "n0", "--"], ops=_ops({})) == 2


def test_down_needs_name_or_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["down"], ops=_ops({})) == 2
    assert "give a testbed name or -f" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["../x", "Two", "a b", "x'y"])
def test_unsafe_names_rejected_before_use(bad: str) -> None:
    ops = cli.Ops(down=lambda name: pytest.fail("down must not run"))
    assert cli.main(["down", bad], ops=ops) == 2


def test_ssh_uses_testbed_key_and_pinned_host_key() -> None:
    calls: list[Any] = []
    assert cli.main(["ssh", "n1"], ops=_ops({}, calls)) == 0
    argv = calls[0]
    assert "StrictHostKeyChecking=yes" in argv and "IdentitiesOnly=yes" in argv
    assert argv[argv.index("-p") + 1] == "4001" and argv[-1] == "root@127.0.0.1"
    assert any(a.endswith("/tb/ssh/id_ed25519") for a in argv)


def test_unknown_verb_is_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_up_idempotent_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.config.topology import HostFacts

    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nnodes: 1\n")
    ops = cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=lambda t, progress: (_state(), False))
    assert cli.main(["up", "-f", str(topo)], ops=ops) == 0
    assert "already up" in capsys.readouterr().out


def test_exec_closes_every_connection_it_opened() -> None:
    closed: list[str] = []

    @contextlib.contextmanager
    def connect(name: str, ep: SshEndpoint) -> Iterator[ChannelNode]:
        try:
            yield FakeGuest(name, {"n0": 0, "n1": 0})
        finally:
            closed.append(name)

    ops = cli.Ops(known=lambda root: ["tb"], load_state=lambda layout: _state(), connect=connect)
    assert cli.main(["exec", "all", "--", "true"], ops=ops) == 0
    assert sorted(closed) == ["n0", "n1"]


def test_up_reports_a_new_testbed_and_leaves_it_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.config.topology import HostFacts

    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nnodes: 1\n")
    downs: list[str] = []
    ops = cli.Ops(host_facts=lambda: HostFacts(64 << 30, 8), up=lambda t, progress: (_state(), True), down=downs.append)
    assert cli.main(["up", "-f", str(topo)], ops=ops) == 0
    assert "testbed t up in" in capsys.readouterr().out and downs == []


@pytest.mark.parametrize(("created", "keep", "downs"), [(True, False, ["tb"]), (True, True, []), (False, False, [])])
def test_ops_open_testbed_the_executors_seam(tmp_path: Path, created: bool, keep: bool, downs: list[str]) -> None:
    """Ops.open_testbed(topology, keep, progress): up reports to progress; torn down on leaving
    only if it was brought up here and not kept."""
    from testbed.config.topology import HostFacts, load

    f = tmp_path / "tb.yaml"
    f.write_text("name: tb\nnodes: 2\n")
    seen: list[str] = []
    progress: list[tuple[str, str]] = []

    def up(topo: Any, report: Any) -> tuple[st.State, bool]:
        report("boot", "n0 started")
        return _state(), created

    ops = cli.Ops(up=up, down=seen.append)
    with ops.open_testbed(load(f, HostFacts(64 << 30, 8)), keep, lambda phase, msg: progress.append((phase, msg))) as tb:
        assert tb.name == "tb" and tb.created is created
    assert seen == downs and progress == [("boot", "n0 started")]
