"""Messages between the pool, its sandbox inits and function processes: one JSON object per
SOCK_SEQPACKET message (boundaries kept by the kernel), optionally carrying file descriptors.
The pool daemon's own control socket uses JSON lines over SOCK_STREAM (see server.py)."""

from __future__ import annotations

import json
import socket

TYPE_CHECKING = False  # importing typing costs tens of ms under TCG in the crun runner's start-up
if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

MAX_MESSAGE = 4 << 20


class Closed(EOFError):
    """The other end is gone (a crashed function, a killed sandbox init)."""


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
    return a, b


def encode(msg: JsonObject) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> JsonObject:
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


def send(sock: socket.socket, msg: JsonObject, fds: list[int] | None = None) -> None:
    data = encode(msg)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv(sock: socket.socket, timeout: float | None = None) -> JsonObject:
    msg, _ = recv_fds(sock, 0, timeout)
    return msg


def recv_fds(sock: socket.socket, maxfds: int, timeout: float | None = None) -> tuple[JsonObject, list[int]]:
    sock.settimeout(timeout)
    try:
        if maxfds:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, maxfds)
        else:
            data, fds = sock.recv(MAX_MESSAGE), []
    except ConnectionResetError as exc:
        raise Closed(str(exc)) from exc
    finally:
        sock.settimeout(None)
    if not data:
        raise Closed("peer closed the connection")
    return decode(data), list(fds)


def call(sock: socket.socket, msg: JsonObject, timeout: float | None = None) -> JsonObject:
    """Request/response with a sandbox init; raises on an error answer."""
    send(sock, msg)
    reply = recv(sock, timeout)
    if not reply.get("ok", False):
        raise OSError(f"{msg.get('op')}: {reply.get('error', 'failed')}")
    return reply
