"""`tbagent serve`: JSON-lines requests on stdin, replies on stdout, one per line.

Request:  {"v": 1, "id": 7, "op": "store.list", "args": {"mhd": "mhd0"}}
Reply:    {"v": 1, "id": 7, "ok": true, "result": ...}
          {"v": 1, "id": 7, "ok": false, "error": {"code": "bad-request", "message": "..."}}
A malformed line gets a structured error reply, never a hang or a crash."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from tbagent import __version__, info
from tbagent.snap import cli as snap_cli
from tbagent.store import StoreError
from tbagent.store import cli as store_cli

PROTOCOL = 1
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


def handle(line: str) -> dict[str, Any]:
    try:
        req = json.loads(line)
    except ValueError as exc:
        return _error(None, "bad-json", f"not JSON: {exc}")
    if not isinstance(req, dict):
        return _error(None, "bad-request", "a request is a JSON object")
    rid = req.get("id")
    if req.get("v") != PROTOCOL:
        return _error(rid, "bad-version", f"protocol version {req.get('v')!r} is not {PROTOCOL}")
    op, args = req.get("op"), req.get("args", {})
    if op not in OPS:
        return _error(rid, "unknown-op", f"unknown op {op!r} (known: {', '.join(sorted(OPS))})")
    if not isinstance(args, dict):
        return _error(rid, "bad-request", "args must be a JSON object")
    try:
        return {"v": PROTOCOL, "id": rid, "ok": True, "result": OPS[op](**args)}
    except TypeError as exc:
        return _error(rid, "bad-args", str(exc))
    except (StoreError, ValueError, OSError) as exc:
        return _error(rid, type(exc).__name__, str(exc))
    except Exception as exc:  # a bug must not kill the session; report it
        return _error(rid, "internal", "".join(traceback.format_exception_only(exc)).strip())


def serve(inp: TextIO, out: TextIO) -> int:
    for line in inp:
        if not line.strip():
            continue
        out.write(json.dumps(handle(line), separators=(",", ":")) + "\n")
        out.flush()
    return 0


def _cmd(args: argparse.Namespace) -> int:
    return serve(sys.stdin, sys.stdout)


def register(sub: Any) -> None:
    sub.add_parser("serve", help="JSON-lines request mode on stdin/stdout").set_defaults(fn=_cmd)
