"""`tbagent serve`: JSON-lines requests on stdin, replies on stdout, one per line.

Request:  {"v": 1, "id": 7, "op": "store.list", "args": {"mhd": "mhd0"}}
Reply:    {"v": 1, "id": 7, "ok": true, "result": ...}
          {"v": 1, "id": 7, "ok": false, "error": {"code": "bad-request", "message": "..."}}
A malformed line gets a structured error reply, never a hang or a crash."""

from __future__ import annotations

import argparse
import io
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from tbagent import __version__, boundedjson, info
from tbagent.snap import cli as snap_cli
from tbagent.store import StoreError
from tbagent.store import cli as store_cli

PROTOCOL = 1
MAX_LINE = 1 << 20  # characters; a longer line is skipped and answered with an error
MAX_DEPTH = 32  # requests are flat objects: deep nesting is an attack or a bug, not a request
OPS: dict[str, Callable[..., Any]] = {
    "info": info.info,
    "ping": lambda: {"agent": __version__, "protocol": PROTOCOL},
    "store.format": store_cli.op_format,
    "store.put": store_cli.op_put,
    "store.list": store_cli.op_list,
    "store.get": store_cli.op_get,
    "store.delete": store_cli.op_delete,
    "store.check": store_cli.op_check,
    "store.gc": store_cli.op_gc,
    "snap.take": snap_cli.op_take,
    "snap.prepare": snap_cli.op_prepare,
    "snap.run": snap_cli.op_run,
    "snap.dedup": snap_cli.op_dedup,
}


def _error(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL, "id": rid, "ok": False, "error": {"code": code, "message": message}}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def handle(line: str) -> dict[str, Any]:
    """The reply to one request line. Never raises: whatever is wrong becomes an error reply."""
    try:
        return _handle(line)
    except Exception as exc:  # a bug must not kill the session; report it
        return _error(None, "internal", "".join(traceback.format_exception_only(exc)).strip())


def _handle(line: str) -> dict[str, Any]:
    try:
        req = boundedjson.loads(line, MAX_LINE, MAX_DEPTH)
    except ValueError as exc:
        return _error(None, "bad-json", f"not JSON: {exc}")
    if not isinstance(req, dict):
        return _error(None, "bad-request", "a request is a JSON object")
    rid = req.get("id")
    if not _scalar(rid):  # echoed back as is, so only a plain value
        return _error(None, "bad-request", "id must be a number, a string or null")
    if req.get("v") != PROTOCOL:
        return _error(rid, "bad-version", f"protocol version {req.get('v')!r:.40} is not {PROTOCOL}")
    op, args = req.get("op"), req.get("args", {})
    if not isinstance(op, str) or op not in OPS:
        return _error(rid, "unknown-op", f"unknown op {op!r:.80} (known: {', '.join(sorted(OPS))})")
    if not isinstance(args, dict):
        return _error(rid, "bad-request", "args must be a JSON object")
    try:
        return {"v": PROTOCOL, "id": rid, "ok": True, "result": OPS[op](**args)}
    except TypeError as exc:
        return _error(rid, "bad-args", str(exc))
    except (StoreError, ValueError, OSError) as exc:
        return _error(rid, type(exc).__name__, str(exc))


def _encode(reply: dict[str, Any]) -> str:
    try:
        return json.dumps(reply, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # an op returned something JSON cannot carry
        return json.dumps(_error(reply.get("id"), "internal", f"the result is not JSON: {exc}"), separators=(",", ":"))


def _lines(inp: TextIO) -> Iterator[str | None]:
    """The input's lines; None for one longer than MAX_LINE, which is read past, never held."""
    while line := inp.readline(MAX_LINE + 1):
        if len(line) <= MAX_LINE or line.endswith("\n"):
            yield line
            continue
        while (rest := inp.readline(MAX_LINE + 1)) and not rest.endswith("\n"):
            pass
        yield None


def serve(inp: TextIO, out: TextIO) -> int:
    for line in _lines(inp):
        if line is None:
            reply = _error(None, "too-large", f"request line longer than {MAX_LINE} characters")
        elif not line.strip():
            continue
        else:
            reply = handle(line)
        out.write(_encode(reply) + "\n")
        out.flush()
    return 0


def _cmd(args: argparse.Namespace) -> int:
    # Bytes that are not UTF-8 must reach handle() as a bad line, not stop the reading loop.
    inp = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    return serve(inp, sys.stdout)


def register(sub: Any) -> None:
    sub.add_parser("serve", help="JSON-lines request mode on stdin/stdout").set_defaults(fn=_cmd)
