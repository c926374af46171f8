"""The Node interface: run commands on the host or on a guest, the same way.

Guests are reached with fabric over the node's loopback-only forwarded SSH port, with the
testbed's own key and the node's pinned host key (RejectPolicy: no trust on first use)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import fabric
import paramiko
from invoke.exceptions import UnexpectedExit

from testbed.errors import CommandError, NodeError
from testbed.hostcmd import run as host_run

log = logging.getLogger("testbed")


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
    name: str

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result: ...


class HostNode:
    name = "host"

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        t0 = time.monotonic()
        try:
            p = host_run(argv, check=check, timeout=timeout, capture=not stream)
        except CommandError as exc:
            raise NodeError(f"host: {exc}") from exc
        return Result("host", tuple(argv), p.returncode, p.stdout or "", "", time.monotonic() - t0)


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path


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
        self._conn = _connection(endpoint, timeout)

    def __enter__(self) -> GuestNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def open(self) -> None:
        self._conn.open()

    def open_channel(self, command: str, timeout: float) -> paramiko.Channel:
        self._conn.open()
        chan: paramiko.Channel = self._conn.transport.open_session(timeout=timeout)
        chan.exec_command(command)
        return chan

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        cmd = f"{shlex.join(argv)} </dev/null"  # stdin closed, as for host commands
        log.debug("+ [%s] %s", self.name, cmd)
        t0 = time.monotonic()
        try:
            r = self._conn.run(cmd, hide=not stream, warn=True, timeout=timeout, pty=False)
        except UnexpectedExit as exc:  # only with warn=False; kept for safety
            r = exc.result
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise NodeError(f"{self.name}: cannot run {cmd!r}: {exc}") from exc
        res = Result(self.name, tuple(argv), r.exited, r.stdout, r.stderr, time.monotonic() - t0)
        if check and not res.ok:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-10:])
            raise NodeError(f"{self.name}: {cmd!r} exited {r.exited}: {tail}")
        return res

    def put(self, local: Path, remote: str) -> None:
        self._conn.put(str(local), remote)

    def get(self, remote: str, local: Path) -> None:
        self._conn.get(remote, str(local))


@contextlib.contextmanager
def guest(name: str, endpoint: SshEndpoint, timeout: float = 15.0) -> Iterator[GuestNode]:
    node = GuestNode(name, endpoint, timeout)
    try:
        yield node
    finally:
        node.close()
