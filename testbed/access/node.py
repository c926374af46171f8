"""The Node interface: run commands and copy files on the host or on a guest, the same way.

Guests are reached with fabric over the node's loopback-only forwarded SSH port, with the
testbed's own key and the node's pinned host key (RejectPolicy: no trust on first use).

Errors are typed and nothing from fabric, invoke or paramiko escapes this module:
  Unreachable   the node cannot be reached (connect, auth, host key) or the session was lost;
  NodeTimeout   a command did not finish within its timeout;
  CommandFailed a command ran and exited non-zero while check=True (exit code, output tail);
  NodeError     anything else that failed on the node (e.g. a file to copy does not exist).
The original exception is kept as __cause__."""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import fabric
import paramiko
from invoke.exceptions import CommandTimedOut, Failure, ThreadException, UnexpectedExit

from testbed.errors import CommandError, CommandFailed, NodeError, NodeTimeout, Unreachable
from testbed.hostcmd import run as host_run

log = logging.getLogger("testbed")
TAIL_LINES = 10  # lines of output a CommandFailed message quotes


@dataclass(frozen=True)
class Result:
    node: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Node(Protocol):
    """What every node offers, the host included."""

    @property
    def name(self) -> str: ...

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...


class ChannelNode(Node, Protocol):
    """A guest node: also opens a raw channel running one command (the agent's session)."""

    def open_channel(self, command: str, timeout: float) -> paramiko.Channel: ...


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class HostNode:
    """The machine the toolkit runs on, as a Node (commands through hostcmd.run)."""

    name = "host"

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        t0 = time.monotonic()
        try:
            p = host_run(argv, check=False, timeout=timeout, capture=not stream)
        except CommandError as exc:  # with check=False only a timeout raises it
            if isinstance(exc.__cause__, subprocess.TimeoutExpired):
                raise NodeTimeout(f"host: {shlex.join(argv)!r} timed out after {timeout:g}s") from exc
            raise NodeError(f"host: {exc}") from exc
        output = p.stdout or ""
        if check and p.returncode != 0:
            # The same text as hostcmd's CommandError, which this replaced.
            raise CommandFailed(f"host: command failed ({p.returncode}): {' '.join(argv)}\n{tail(output, 15)}",
                                p.returncode, output)
        return Result("host", tuple(argv), p.returncode, output, "", time.monotonic() - t0)

    def put(self, local: Path, remote: str) -> None:
        self._copy(local, Path(remote))

    def get(self, remote: str, local: Path) -> None:
        self._copy(Path(remote), local)

    def _copy(self, src: Path, dst: Path) -> None:
        try:
            shutil.copyfile(src, dst)
        except OSError as exc:
            raise NodeError(f"host: cannot copy {src} to {dst}: {exc}") from exc


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path


# What a lost or refused SSH session raises, below fabric: connect errors are OSErrors (refused,
# timed out, no route), auth and host-key failures SSHExceptions, a closed stream EOFError.
_SESSION_ERRORS: tuple[type[Exception], ...] = (paramiko.SSHException, EOFError, ConnectionError, TimeoutError,
                                                 socket.gaierror, paramiko.ssh_exception.NoValidConnectionsError)
_CONNECT_ERRORS: tuple[type[Exception], ...] = (OSError, *_SESSION_ERRORS)
# invoke's ThreadException and Failure: its I/O threads died or the run broke below the command.
_RUN_ERRORS: tuple[type[Exception], ...] = (ThreadException, Failure, *_CONNECT_ERRORS)


def _connection(ep: SshEndpoint, timeout: float) -> fabric.Connection:
    config = fabric.Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
    conn = fabric.Connection(
        host=ep.host, port=ep.port, user=ep.user, config=config, connect_timeout=timeout,
        connect_kwargs={"key_filename": str(ep.key), "look_for_keys": False, "allow_agent": False,
                        "banner_timeout": timeout, "auth_timeout": timeout},
    )
    conn.client.load_host_keys(str(ep.known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


class GuestNode:
    """A testbed node reached over SSH. A context manager: the session closes on exit."""

    def __init__(self, name: str, endpoint: SshEndpoint, timeout: float = 15.0) -> None:
        self.name = name
        self.endpoint = endpoint
        self._lock = threading.Lock()  # one connect, even when threads share the node
        try:
            self._conn = _connection(endpoint, timeout)
        except OSError as exc:  # the pinned host keys cannot be read
            raise Unreachable(f"{name}: cannot load the pinned host key: {exc}") from exc

    def __enter__(self) -> GuestNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def open(self) -> None:
        """Connect now (else the first command connects); Unreachable if that fails."""
        with self._lock:
            if self._conn.is_connected:
                return
            try:
                self._conn.open()
            except _CONNECT_ERRORS as exc:
                raise Unreachable(f"{self.name}: cannot connect to {self.endpoint.host}:{self.endpoint.port}: "
                                  f"{exc or type(exc).__name__}") from exc

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        cmd = f"{shlex.join(argv)} </dev/null"  # stdin closed, as for host commands
        log.debug("+ [%s] %s", self.name, cmd)
        self.open()
        t0 = time.monotonic()
        try:
            r = self._conn.run(cmd, hide=not stream, warn=True, timeout=timeout, pty=False)
        except UnexpectedExit as exc:  # only with warn=False; kept for safety
            r = exc.result
        except CommandTimedOut as exc:
            raise NodeTimeout(f"{self.name}: {cmd!r} timed out after {exc.timeout:g}s") from exc
        except _RUN_ERRORS as exc:
            raise Unreachable(f"{self.name}: cannot run {cmd!r}: {exc or type(exc).__name__}") from exc
        res = Result(self.name, tuple(argv), r.exited, r.stdout, r.stderr, time.monotonic() - t0)
        if check and not res.ok:
            output = r.stderr or r.stdout
            raise CommandFailed(f"{self.name}: {cmd!r} exited {r.exited}: {tail(output)}", r.exited, output)
        return res

    def put(self, local: Path, remote: str) -> None:
        self.open()
        self._transfer(lambda: self._conn.put(str(local), remote), f"put {local} to {remote}")

    def get(self, remote: str, local: Path) -> None:
        self.open()
        self._transfer(lambda: self._conn.get(remote, str(local)), f"get {remote} to {local}")

    def _transfer(self, copy: Callable[[], object], what: str) -> None:
        try:
            copy()
        except _SESSION_ERRORS as exc:
            raise Unreachable(f"{self.name}: cannot {what}: {exc or type(exc).__name__}") from exc
        except OSError as exc:  # a missing file or a permission, on either side
            raise NodeError(f"{self.name}: cannot {what}: {exc}") from exc

    def open_channel(self, command: str, timeout: float) -> paramiko.Channel:
        """A new channel on the node's session running `command`; the caller closes it."""
        self.open()
        transport = self._conn.transport
        if transport is None or not transport.is_active():
            raise Unreachable(f"{self.name}: no SSH transport")
        try:
            chan: paramiko.Channel = transport.open_session(timeout=timeout)
        except _CONNECT_ERRORS as exc:
            raise Unreachable(f"{self.name}: cannot open a channel: {exc or type(exc).__name__}") from exc
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
        except _CONNECT_ERRORS as exc:
            chan.close()
            raise Unreachable(f"{self.name}: cannot start {command!r}: {exc or type(exc).__name__}") from exc
        return chan


@contextlib.contextmanager
def guest(name: str, endpoint: SshEndpoint, timeout: float = 15.0) -> Iterator[GuestNode]:
    node = GuestNode(name, endpoint, timeout)
    try:
        yield node
    finally:
        node.close()
