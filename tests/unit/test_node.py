"""The Node error mapping: what fabric, invoke and paramiko raise becomes Unreachable,
NodeTimeout, CommandFailed or NodeError, and nothing of theirs escapes. Fakes sit at the
fabric seam (GuestNode's connection); the host node runs real commands."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest
from invoke.exceptions import CommandTimedOut, ThreadException
from invoke.runners import Result as InvokeResult

from testbed.access import node as remote
from testbed.errors import CommandFailed, NodeError, NodeTimeout, Unreachable

pytestmark = pytest.mark.unit


class Key:
    """Enough of a paramiko key for BadHostKeyException's message."""

    def __init__(self, b64: str) -> None:
        self.b64 = b64

    def get_base64(self) -> str:
        return self.b64


class FakeTransport:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.channels: list[FakeChannel] = []

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float | None = None) -> FakeChannel:
        if self.conn.session_error is not None:
            raise self.conn.session_error
        chan = FakeChannel(self.conn.exec_error)
        self.channels.append(chan)
        return chan


class FakeChannel:
    def __init__(self, exec_error: BaseException | None) -> None:
        self.exec_error = exec_error
        self.closed = False
        self.command = ""
        self.timeout: float | None = None

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def exec_command(self, command: str) -> None:
        if self.exec_error is not None:
            raise self.exec_error
        self.command = command

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    """fabric.Connection as GuestNode uses it: open, run, put, get, transport, close."""

    def __init__(self) -> None:
        self.is_connected = False
        self.opens = 0
        self.open_error: BaseException | None = None
        self.run_error: BaseException | None = None
        self.transfer_error: BaseException | None = None
        self.session_error: BaseException | None = None
        self.exec_error: BaseException | None = None
        self.exited = 0
        self.transport: FakeTransport | None = None

    def open(self) -> None:
        self.opens += 1
        if self.open_error is not None:
            raise self.open_error
        self.is_connected = True
        self.transport = FakeTransport(self)

    def run(self, cmd: str, **kwargs: Any) -> InvokeResult:
        if self.run_error is not None:
            raise self.run_error
        return InvokeResult(stdout="out\n", stderr="line1\nerr tail\n", exited=self.exited, command=cmd)

    def put(self, local: str, remote: str) -> None:
        if self.transfer_error is not None:
            raise self.transfer_error

    def get(self, remote: str, local: str) -> None:
        if self.transfer_error is not None:
            raise self.transfer_error

    def close(self) -> None:
        self.is_connected = False


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> FakeConnection:
    fake = FakeConnection()
    monkeypatch.setattr(remote, "_connection", lambda ep, timeout: fake)
    return fake


def _node() -> remote.GuestNode:
    return remote.GuestNode("node0", remote.SshEndpoint("127.0.0.1", 2222, "root", Path("/k"), Path("/kh")))


def _timed_out() -> CommandTimedOut:
    return CommandTimedOut(InvokeResult(stdout="", stderr="", exited=-1, command="sleep 9"), timeout=5)


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("timed out"),
    socket.gaierror(-2, "Name or service not known"),
    paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 2222): ConnectionRefusedError()}),
    paramiko.AuthenticationException("Authentication failed."),
    paramiko.BadHostKeyException("127.0.0.1", cast(paramiko.PKey, Key("got")), cast(paramiko.PKey, Key("pinned"))),
    paramiko.SSHException("Server '[127.0.0.1]:2222' not found in known_hosts"),
    EOFError(),
], ids=["refused", "connect-timeout", "dns", "no-valid-connections", "auth", "bad-host-key", "unknown-host-key", "eof"])
def test_connect_failures_are_unreachable(conn: FakeConnection, exc: BaseException) -> None:
    conn.open_error = exc
    with pytest.raises(Unreachable, match=r"node0: cannot connect to 127\.0\.0\.1:2222") as info:
        _node().run(["true"])
    assert info.value.__cause__ is exc


@pytest.mark.parametrize("exc", [
    paramiko.SSHException("SSH session not active"),
    EOFError(),
    OSError("Socket is closed"),
    ThreadException([]),
], ids=["session-not-active", "eof", "socket-closed", "io-thread"])
def test_a_session_lost_during_a_command_is_unreachable(conn: FakeConnection, exc: BaseException) -> None:
    conn.run_error = exc
    with pytest.raises(Unreachable, match="node0: cannot run 'true </dev/null'"):
        _node().run(["true"])


def test_invokes_timeout_becomes_node_timeout(conn: FakeConnection) -> None:
    conn.run_error = _timed_out()
    with pytest.raises(NodeTimeout, match=r"node0: 'sleep 9 </dev/null' timed out after 5s") as info:
        _node().run(["sleep", "9"], timeout=5)
    assert not isinstance(info.value, Unreachable)
    assert isinstance(info.value.__cause__, CommandTimedOut)  # kept as the cause, never raised itself


def test_a_non_zero_exit_with_check_is_command_failed_with_code_and_tail(conn: FakeConnection) -> None:
    conn.exited = 3
    with pytest.raises(CommandFailed, match=r"node0: 'false </dev/null' exited 3: line1\nerr tail") as info:
        _node().run(["false"])
    assert info.value.exit_code == 3 and info.value.output == "line1\nerr tail\n"


def test_a_non_zero_exit_without_check_is_a_result(conn: FakeConnection) -> None:
    conn.exited = 3
    r = _node().run(["false"], check=False)
    assert r.exit_code == 3 and not r.ok and r.stdout == "out\n" and r.node == "node0"


def test_the_node_connects_once(conn: FakeConnection) -> None:
    node = _node()
    node.run(["true"])
    node.run(["true"])
    assert conn.opens == 1


@pytest.mark.parametrize(("exc", "expected"), [
    (FileNotFoundError(2, "No such file"), NodeError),
    (PermissionError(13, "Permission denied"), NodeError),
    (paramiko.SSHException("Channel closed."), Unreachable),
    (EOFError(), Unreachable),
], ids=["missing", "permission", "channel-closed", "eof"])
@pytest.mark.parametrize("op", ["put", "get"])
def test_transfer_failures(conn: FakeConnection, exc: BaseException, expected: type[NodeError], op: str) -> None:
    conn.transfer_error = exc
    node = _node()
    with pytest.raises(expected, match=f"node0: cannot {op} ") as info:
        if op == "put":
            node.put(Path("/a"), "/b")
        else:
            node.get("/b", Path("/a"))
    assert type(info.value) is expected


def test_open_channel_runs_the_command_on_a_new_session(conn: FakeConnection) -> None:
    chan: Any = _node().open_channel("tbagent serve", 7.0)
    assert chan.command == "tbagent serve" and chan.timeout == 7.0 and not chan.closed


def test_open_channel_failures_are_unreachable_and_close_the_channel(conn: FakeConnection) -> None:
    node = _node()
    conn.exec_error = paramiko.SSHException("exec refused")
    with pytest.raises(Unreachable, match="cannot start 'tbagent serve'"):
        node.open_channel("tbagent serve", 1.0)
    assert conn.transport is not None and conn.transport.channels[0].closed
    conn.exec_error, conn.session_error = None, paramiko.ChannelException(2, "Connect failed")
    with pytest.raises(Unreachable, match="cannot open a channel"):
        node.open_channel("tbagent serve", 1.0)


def test_unreadable_known_hosts_is_unreachable(tmp_path: Path) -> None:
    ep = remote.SshEndpoint("127.0.0.1", 2222, "root", tmp_path / "k", tmp_path / "missing")
    with pytest.raises(Unreachable, match="pinned host key"):
        remote.GuestNode("node0", ep)


# --- the host as a node --------------------------------------------------------------------

def test_host_node_runs_and_reports() -> None:
    r = remote.HostNode().run([sys.executable, "-c", "print('hi')"])
    assert r.ok and r.stdout == "hi\n" and r.node == "host"


def test_host_node_failure_is_command_failed() -> None:
    with pytest.raises(CommandFailed, match=r"host: command failed \(4\)") as info:
        remote.HostNode().run([sys.executable, "-c", "print('boom'); raise SystemExit(4)"])
    assert info.value.exit_code == 4 and "boom" in info.value.output
    assert remote.HostNode().run(["false"], check=False).exit_code == 1


def test_host_node_timeout_is_node_timeout() -> None:
    with pytest.raises(NodeTimeout, match=r"timed out after 0\.2s"):
        remote.HostNode().run(["sleep", "5"], timeout=0.2)


def test_host_node_copies_files(tmp_path: Path) -> None:
    host = remote.HostNode()
    (tmp_path / "a").write_text("x")
    host.put(tmp_path / "a", str(tmp_path / "b"))
    host.get(str(tmp_path / "b"), tmp_path / "c")
    assert (tmp_path / "c").read_text() == "x"
    with pytest.raises(NodeError, match="host: cannot copy"):
        host.get(str(tmp_path / "missing"), tmp_path / "d")


def test_both_nodes_satisfy_the_protocols() -> None:
    host: remote.Node = remote.HostNode()
    guest_cls: type[remote.ChannelNode] = remote.GuestNode
    assert host.name == "host" and guest_cls is remote.GuestNode
