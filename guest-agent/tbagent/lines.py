"""A restored function's channel (JSON lines over two pipes, tbagent.snap.fnserver) and the tail
of a CRIU log: shared by snapshot instances and the sandbox restore hook. Standard library only,
as sandbox inits import it."""

from __future__ import annotations

import json
import os
import select
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject


class Closed(Exception):
    """The process at the other end has gone."""


class LinePipes:
    """Requests written to `wfd`, one JSON object per line; replies read from `rfd`."""

    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd, self.rfd = wfd, rfd
        self._buf = b""

    def send(self, obj: JsonObject) -> None:
        try:
            os.write(self.wfd, json.dumps(obj).encode() + b"\n")
        except BrokenPipeError:
            raise Closed from None

    def recv(self, timeout: float | None) -> JsonObject:
        """The next reply; TimeoutError after `timeout` seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError(f"no reply within {timeout} s")
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise Closed
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: JsonObject = json.loads(line)
        return reply

    def call(self, obj: JsonObject, timeout: float | None) -> JsonObject:
        self.send(obj)
        return self.recv(timeout)

    def close(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass


def log_tail(path: str, n: int = 3) -> str:
    """The last `n` error lines of a CRIU log (or its last lines), joined on one line."""
    try:
        with open(path, errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return f"{os.path.basename(path)} missing"
    return " | ".join(([ln for ln in lines if "Error" in ln or "cxltb_mmt" in ln] or lines)[-n:])
