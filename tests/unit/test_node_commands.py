"""ssh NODE -- CMD, ssh-config, cp both ways, exec all keeping the output of the nodes that
worked, and exec's stdin forwarding, through the CLI with fake nodes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest

from testbed.access.node import ChannelNode, Result, SshEndpoint
from testbed.errors import Unreachable
from testbed.lifecycle import state as st
from testbed.ui import cli


class FakeChannel:
    """A channel running `cat`-like commands: stdout is what was sent, upper-cased; stderr 'err'."""

    def __init__(self, command: str, code: int) -> None:
        self.command = command
        self.code = code
        self.sent = b""
        self.eof = threading.Event()
        self.out_done = False
        self.err_done = False
        self.closed = False

    def settimeout(self, timeout: float | None) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def shutdown_write(self) -> None:
        self.eof.set()

    def recv(self, n: int) -> bytes:
        self.eof.wait(5)  # like a real cat: nothing out before its input ends here
        if self.out_done:
            return b""
        self.out_done = True
        return self.sent.upper()

    def recv_stderr(self, n: int) -> bytes:
        if self.err_done:
            return b""
        self.err_done = True
        return b"err\n"

    def recv_exit_status(self) -> int:
        return self.code

    def close(self) -> None:
        self.closed = True


class FakeGuest:
    def __init__(self, name: str, codes: dict[str, int], log: list[Any]) -> None:
        self.name = name
        self.codes = codes
        self.log = log

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        if self.codes[self.name] < 0:
            raise Unreachable(f"{self.name}: cannot connect to 127.0.0.1:4001: refused")
        return Result(self.name, tuple(argv), self.codes[self.name], f"out of {self.name}\n", "", 0.0)

    def put(self, local: Path, remote: str) -> None:
        self.log.append(("put", self.name, local, remote))

    def get(self, remote: str, local: Path) -> None:
        self.log.append(("get", self.name, remote, local))

    def open_channel(self, command: str, timeout: float) -> paramiko.Channel:
        chan = FakeChannel(command, self.codes[self.name])
        self.log.append(("channel", self.name, chan))
        return cast(paramiko.Channel, chan)


def _state() -> st.State:
    s = st.State("tb", "tb.yaml", "", "x", st.Phase.UP)
    s.nodes = {n: st.NodeState(n, f"cxltb-tb_{n}", 4000 + i, "10.0.0.1/24", ["m"]) for i, n in enumerate(["n0", "n1"])}
    return s


def _ops(codes: dict[str, int], log: list[Any], stdin: bytes | None = None) -> cli.Ops:
    @contextlib.contextmanager
    def connect(name: str, ep: SshEndpoint) -> Iterator[ChannelNode]:
        yield FakeGuest(name, codes, log)

    return cli.Ops(known=lambda root: ["tb"], load_state=lambda layout: _state(), connect=connect,
                   execv=lambda path, argv: log.append(("execv", path, argv)), read_stdin=lambda: stdin)


def test_ssh_with_a_command_passes_it_quoted_after_the_host() -> None:
    log: list[Any] = []
    assert cli.main(["ssh", "n1", "--", "echo", "a b", "$HOME"], ops=_ops({}, log)) == 0
    (_, path, argv), = log
    assert path == "/usr/bin/ssh"
    assert argv[-3:] == ["--", "root@127.0.0.1", "echo 'a b' '$HOME'"]
    assert argv[argv.index("-p") + 1] == "4001" and "StrictHostKeyChecking=yes" in argv


def test_ssh_without_a_command_is_interactive() -> None:
    log: list[Any] = []
    assert cli.main(["ssh", "n0"], ops=_ops({}, log)) == 0
    assert log[0][2][-1] == "root@127.0.0.1"


def test_ssh_config_names_each_node_with_the_testbeds_key_and_pinned_hosts(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path) -> None:
    assert cli.main(["ssh-config"], ops=_ops({}, [])) == 0
    text = capsys.readouterr().out
    assert "Host tb-n0 n0\n" in text and "Host tb-n1 n1\n" in text
    assert "  Port 4001\n" in text and "  HostName 127.0.0.1\n" in text and "  User root\n" in text
    assert "  StrictHostKeyChecking yes\n" in text
    assert any(line.strip().startswith("IdentityFile") and line.endswith("/tb/ssh/id_ed25519")
               for line in text.splitlines())
    assert any(line.strip().startswith("UserKnownHostsFile") and line.endswith("/tb/ssh/known_hosts")
               for line in text.splitlines())
    if shutil.which("ssh"):  # what OpenSSH itself makes of it
        cfg = tmp_path / "config"
        cfg.write_text(text)
        seen = subprocess.run(["ssh", "-G", "-F", str(cfg), "n1"], capture_output=True, text=True, check=True).stdout
        assert "port 4001" in seen and "hostname 127.0.0.1" in seen and "stricthostkeychecking true" in seen


def test_cp_to_a_node(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    log: list[Any] = []
    assert cli.main(["cp", str(f), "n1:/tmp/"], ops=_ops({}, log)) == 0
    assert log == [("put", "n1", f.resolve(), "/tmp/file.txt")]
    log.clear()
    assert cli.main(["cp", str(f), "n0:/root/y"], ops=_ops({}, log)) == 0
    assert log == [("put", "n0", f.resolve(), "/root/y")]


def test_cp_from_a_node_into_a_folder(tmp_path: Path) -> None:
    log: list[Any] = []
    assert cli.main(["cp", "n0:/etc/hostname", str(tmp_path)], ops=_ops({}, log)) == 0
    assert log == [("get", "n0", "/etc/hostname", tmp_path.resolve() / "hostname")]


@pytest.mark.parametrize(("src", "dst"), [("a", "b"), ("n0:/x", "n1:/y")])
def test_cp_needs_exactly_one_remote_side(src: str, dst: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cp", src, dst], ops=_ops({}, [])) == 2
    assert "exactly one of SRC and DST" in capsys.readouterr().err


def test_cp_unknown_node_is_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    assert cli.main(["cp", str(f), "n7:/tmp/"], ops=_ops({}, [])) == 2


def test_exec_all_keeps_the_output_of_nodes_that_worked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["exec", "all", "--", "true"], ops=_ops({"n0": 0, "n1": -1}, [])) != 0
    cap = capsys.readouterr()
    assert "n0 | out of n0" in cap.out
    assert "testbed: n1: failed: n1: cannot connect" in cap.err


def test_exec_forwards_stdin_to_one_node(capsys: pytest.CaptureFixture[str]) -> None:
    log: list[Any] = []
    assert cli.main(["exec", "n0", "--", "cat", "-"], ops=_ops({"n0": 0}, log, b"hi\n")) == 0
    (_, node, chan), = log
    assert node == "n0" and chan.command == "cat -" and chan.sent == b"hi\n" and chan.closed
    cap = capsys.readouterr()
    assert cap.out == "HI\n" and cap.err == "err\n"


def test_exec_forwards_stdin_to_every_node_and_returns_the_worst_code(capsys: pytest.CaptureFixture[str]) -> None:
    log: list[Any] = []
    assert cli.main(["exec", "all", "--", "cat"], ops=_ops({"n0": 0, "n1": 4}, log, b"x")) == 4
    assert sorted((entry[1], entry[2].sent) for entry in log) == [("n0", b"x"), ("n1", b"x")]
    cap = capsys.readouterr()
    assert "n0 | X" in cap.out and "n1 | X" in cap.out and "n1: exit code 4" in cap.err


def test_exec_no_stdin_flag_runs_without_a_channel() -> None:
    log: list[Any] = []
    assert cli.main(["exec", "-n", "n0", "--", "true"], ops=_ops({"n0": 0}, log, b"ignored")) == 0
    assert log == []
