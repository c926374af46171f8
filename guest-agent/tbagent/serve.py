"""`tbagent serve`: JSON-lines requests on stdin, replies on stdout, one per line (the envelope
and every op's types: tbproto).

Request:  {"v": 1, "id": 7, "op": "store.list", "args": {"mhd": "mhd0"}}
Reply:    {"v": 1, "id": 7, "ok": true, "result": ..., "timing": {"start_ns": .., "end_ns": ..}}
          {"v": 1, "id": 7, "ok": false, "error": {"code": "bad-args", "message": "..."}}
Requests run concurrently (up to `max_inflight`, each in a worker thread), so replies can come
in any order: the id matches them. A malformed line gets a structured error reply, never a hang
or a crash."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from tbproto import catalog as proto_catalog
from tbproto import ops as proto
from tbproto.codec import decode
from tbproto.envelope import VERSION, Id, Reply, Timing, error
from tbproto.errors import ErrorCode

from tbagent import __version__, boundedjson, info
from tbagent.errors import code_of
from tbagent.functions import CATALOG
from tbagent.snap import cli as snap_cli
from tbagent.store import cli as store_cli

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

    from tbagent.commands import Subcommands

PROTOCOL = VERSION
MAX_LINE = 1 << 20  # characters; a longer line is skipped and answered with an error
MAX_DEPTH = 32  # requests are flat objects: deep nesting is an attack or a bug, not a request
MAX_INFLIGHT = 16  # requests running at once; the reader stops reading while this many run


@dataclass(frozen=True)
class Handler:
    request: type  # the tbproto type the args are decoded into
    # Takes the decoded request (of `request`, a type that differs per handler: hence Any), returns
    # the JSON result.
    fn: Callable[[Any], object]


def _given(req: object) -> JsonObject:
    """The fields of a decoded request that were given (None: the handler's default applies)."""
    if not dataclasses.is_dataclass(req) or isinstance(req, type):
        raise TypeError(f"not a decoded request: {type(req).__name__}")  # a bug in the handler table
    return {f.name: v for f in dataclasses.fields(req) if (v := getattr(req, f.name)) is not None}


def _kw(fn: Callable[..., object]) -> Callable[[object], object]:
    return lambda req: fn(**_given(req))


def _sandbox(name: str) -> Callable[[object], object]:
    # The sandbox command line imports its modules lazily (the pool pulls in much): so does this.
    def call(req: object) -> object:
        from tbagent.sandbox import cli as sandbox_cli

        fn: Callable[..., object] = getattr(sandbox_cli, name)
        return fn(**_given(req))
    return call


def _llm(name: str) -> Callable[[object], object]:
    # numpy is imported only by sessions that serve models.
    def call(req: object) -> object:
        from tbagent.llm import serving

        fn: Callable[..., object] = getattr(serving, name)
        return fn(**_given(req))
    return call


def _kv(name: str) -> Callable[[object], object]:
    def call(req: object) -> object:
        from tbagent.kv import disagg

        fn: Callable[..., object] = getattr(disagg, name)
        return fn(**_given(req))
    return call


def catalog() -> JsonObject:
    return {"protocol": PROTOCOL, "functions": sorted(CATALOG)}


OPS: dict[str, Handler] = {
    "info": Handler(proto.Info, lambda _req: info.info()),
    "ping": Handler(proto.Ping, lambda _req: {"agent": __version__, "protocol": PROTOCOL}),
    "catalog": Handler(proto.Catalog, lambda _req: catalog()),
    "store.format": Handler(proto.StoreFormat, _kw(store_cli.op_format)),
    "store.put": Handler(proto.StorePut, _kw(store_cli.op_put)),
    "store.list": Handler(proto.StoreList, _kw(store_cli.op_list)),
    "store.get": Handler(proto.StoreGet, _kw(store_cli.op_get)),
    "store.delete": Handler(proto.StoreDelete, _kw(store_cli.op_delete)),
    "store.check": Handler(proto.StoreCheck, _kw(store_cli.op_check)),
    "store.gc": Handler(proto.StoreGc, _kw(store_cli.op_gc)),
    "snap.take": Handler(proto.SnapTake, _kw(snap_cli.op_take)),
    "snap.prepare": Handler(proto.SnapPrepare, _kw(snap_cli.op_prepare)),
    "snap.run": Handler(proto.SnapRun, _kw(snap_cli.op_run)),
    "snap.dedup": Handler(proto.SnapDedup, _kw(snap_cli.op_dedup)),
    "sandbox.pool": Handler(proto.SandboxPool, _sandbox("op_pool")),
    "sandbox.stop": Handler(proto.SandboxStop, _sandbox("op_stop")),
    "sandbox.run": Handler(proto.SandboxRunPool, _sandbox("op_run")),
    "sandbox.fresh": Handler(proto.SandboxRunFresh, _sandbox("op_fresh")),
    "model.put": Handler(proto.ModelPut, _llm("op_put")),
    "model.list": Handler(proto.ModelList, _llm("op_list")),
    "model.disk": Handler(proto.ModelDisk, _llm("op_disk")),
    "llm.run": Handler(proto.LlmRun, _llm("op_run")),
    "llm.migrate_out": Handler(proto.LlmMigrateOut, _llm("op_migrate_out")),
    "llm.migrate_in": Handler(proto.LlmMigrateIn, _llm("op_migrate_in")),
    "llm.migrate_status": Handler(proto.LlmMigrateStatus, _llm("op_migrate_status")),
    "kv.format": Handler(proto.KvFormat, _kv("op_format")),
    "kv.prefill": Handler(proto.KvPrefill, _kv("op_prefill")),
    "kv.decode": Handler(proto.KvDecode, _kv("op_decode")),
}
assert set(OPS) == set(proto.OPS), "every tbproto op has a handler"  # a wiring bug, caught at import
assert sorted(CATALOG) == list(proto_catalog.names()), "the function registry is tbproto's catalogue"


@dataclass(frozen=True)
class Call:
    """A request that passed the envelope checks, ready to run."""

    id: Id
    op: str
    args: JsonObject


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def parse(line: str) -> Call | Reply:
    """The call a request line asks for, or the error reply it gets without running anything."""
    try:
        req = boundedjson.loads(line, MAX_LINE, MAX_DEPTH)
    except ValueError as exc:
        return error(None, ErrorCode.BAD_JSON, f"not JSON: {exc}")
    if not isinstance(req, dict):
        return error(None, ErrorCode.BAD_REQUEST, "a request is a JSON object")
    rid = req.get("id")
    if not _scalar(rid):  # echoed back as is, so only a plain value
        return error(None, ErrorCode.BAD_REQUEST, "id must be a number, a string or null")
    if req.get("v") != PROTOCOL:
        return error(rid, ErrorCode.BAD_VERSION, f"protocol version {req.get('v')!r:.40} is not {PROTOCOL}")
    op, args = req.get("op"), req.get("args", {})
    if not isinstance(op, str) or op not in OPS:
        return error(rid, ErrorCode.UNKNOWN_OP, f"unknown op {op!r:.80} (known: {', '.join(sorted(OPS))})")
    if not isinstance(args, dict):
        return error(rid, ErrorCode.BAD_REQUEST, "args must be a JSON object")
    return Call(rid, op, args)


def run(call: Call) -> Reply:
    """Run one call; never raises. A bad argument is `bad-args` naming the field; an exception
    the op is not expected to raise (TypeError included) is `internal`: a bug, not the caller's."""
    handler = OPS[call.op]
    start = time.monotonic_ns()
    try:
        request: object = decode(handler.request, call.args, call.op)
        result = handler.fn(request)
    except Exception as exc:
        timing = Timing(start, time.monotonic_ns())
        code = code_of(exc)
        if code is ErrorCode.INTERNAL:
            return error(call.id, code, "".join(traceback.format_exception_only(exc)).strip(), timing)
        return error(call.id, code, str(exc), timing)
    return Reply(call.id, True, result, timing=Timing(start, time.monotonic_ns()))


def handle(line: str) -> JsonObject:
    """The reply to one request line, run here and now. Never raises."""
    try:
        parsed = parse(line)
        return (parsed if isinstance(parsed, Reply) else run(parsed)).to_json()
    except Exception as exc:  # a bug must not kill the session; report it
        return error(None, ErrorCode.INTERNAL, "".join(traceback.format_exception_only(exc)).strip()).to_json()


def _encode(reply: JsonObject) -> str:
    try:
        return json.dumps(reply, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # an op returned something JSON cannot carry
        return json.dumps(error(reply.get("id"), ErrorCode.INTERNAL, f"the result is not JSON: {exc}",
                                None).to_json(), separators=(",", ":"))


def _lines(inp: TextIO) -> Iterator[str | None]:
    """The input's lines; None for one longer than MAX_LINE, which is read past, never held."""
    while line := inp.readline(MAX_LINE + 1):
        if len(line) <= MAX_LINE or line.endswith("\n"):
            yield line
            continue
        while (rest := inp.readline(MAX_LINE + 1)) and not rest.endswith("\n"):
            pass
        yield None


class _Writer:
    """Writes whole reply lines; one lock so concurrent replies never interleave."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, reply: JsonObject) -> None:
        line = _encode(reply) + "\n"
        with self.lock:
            self.out.write(line)
            self.out.flush()


def serve(inp: TextIO, out: TextIO, max_inflight: int = MAX_INFLIGHT) -> int:
    """Answer every request line of `inp` on `out`. max_inflight=1: one at a time, replies in the
    order of the requests."""
    writer = _Writer(out)
    if max_inflight <= 1:
        for line in _lines(inp):
            if line is None:
                writer.send(error(None, ErrorCode.TOO_LARGE, f"request line longer than {MAX_LINE} characters").to_json())
            elif line.strip():
                writer.send(handle(line))
        return 0
    slots = threading.BoundedSemaphore(max_inflight)

    def work(call: Call) -> None:
        try:
            writer.send(run(call).to_json())
        finally:
            slots.release()

    def lost(fut: Future[None]) -> None:
        # run() never raises; a failure here is in writing the reply. Say so on stderr.
        if (exc := fut.exception()) is not None:
            print(f"tbagent serve: a reply was lost: {exc!r}", file=sys.stderr)

    with ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="tbagent-op") as pool:
        for line in _lines(inp):
            if line is None:
                writer.send(error(None, ErrorCode.TOO_LARGE, f"request line longer than {MAX_LINE} characters").to_json())
                continue
            if not line.strip():
                continue
            try:
                parsed = parse(line)
            except Exception as exc:  # a bug in parsing must not end the session
                writer.send(error(None, ErrorCode.INTERNAL, "".join(traceback.format_exception_only(exc)).strip()).to_json())
                continue
            if isinstance(parsed, Reply):
                writer.send(parsed.to_json())
                continue
            slots.acquire()  # backpressure: the next line is read when a slot is free
            pool.submit(work, parsed).add_done_callback(lost)
    return 0


def _cmd(args: argparse.Namespace) -> int:
    # Bytes that are not UTF-8 must reach handle() as a bad line, not stop the reading loop.
    inp = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    return serve(inp, sys.stdout, args.max_inflight)


def register(sub: Subcommands) -> None:
    p = sub.add_parser("serve", help="JSON-lines request mode on stdin/stdout")
    p.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT, help="requests running at once (1: in order)")
    p.set_defaults(fn=_cmd)
