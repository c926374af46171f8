"""The JSON-lines envelope of `tbagent serve`, version 1.

Request: {"v": 1, "id": 7, "op": "store.list", "args": {"mhd": "mhd0"}}
Reply:   {"v": 1, "id": 7, "ok": true, "result": ..., "timing": {"start_ns": .., "end_ns": ..}}
         {"v": 1, "id": 7, "ok": false, "error": {"code": "bad-args", "message": "..."}, "timing": ...}
Replies may come in any order: `id` (echoed as sent) matches them to requests. `timing` is the
agent's monotonic clock around the op itself, so the host can tell its work from the transport."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tbproto.codec import ProtocolError
from tbproto.errors import ErrorCode
from tbproto.jsontypes import Json, JsonObject

VERSION = 1
Id = int | str | None


@dataclass(frozen=True)
class Timing:
    start_ns: int  # the agent's time.monotonic_ns() when the op started
    end_ns: int

    @property
    def op_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True)
class Request:
    id: Id
    op: str
    args: JsonObject  # decoded further by the op's request type

    def line(self) -> str:
        return json.dumps({"v": VERSION, "id": self.id, "op": self.op, "args": self.args}) + "\n"


@dataclass(frozen=True)
class Reply:
    id: Id
    ok: bool
    result: Json = None  # JSON; decoded further by the op's reply type
    code: ErrorCode | str | None = None  # error replies; a code this side does not know stays a str
    message: str = ""
    timing: Timing | None = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {"v": VERSION, "id": self.id, "ok": self.ok}
        if self.ok:
            out["result"] = self.result
        else:
            out["error"] = {"code": str(self.code), "message": self.message}
        if self.timing is not None:
            out["timing"] = {"start_ns": self.timing.start_ns, "end_ns": self.timing.end_ns}
        return out


def error(rid: Id, code: ErrorCode, message: str, timing: Timing | None = None) -> Reply:
    return Reply(rid, False, code=code, message=message, timing=timing)


def _scalar_id(value: object) -> bool:
    return value is None or (isinstance(value, int | str) and not isinstance(value, bool))


def parse_reply(data: object) -> Reply:
    """A reply decoded from JSON data sent by the agent (untrusted): ProtocolError if it is not
    a version-1 reply envelope."""
    op = "reply"
    if not isinstance(data, dict):
        raise ProtocolError(op, "reply", f"expected an object, got {type(data).__name__}")
    if data.get("v") != VERSION:
        raise ProtocolError(op, "v", f"protocol version {data.get('v')!r:.40} is not {VERSION}")
    rid = data.get("id")
    if not _scalar_id(rid):
        raise ProtocolError(op, "id", "must be a number, a string or null")
    ok = data.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError(op, "ok", "expected a boolean")
    timing = None
    if (t := data.get("timing")) is not None:
        if not (isinstance(t, dict) and all(isinstance(t.get(k), int) and not isinstance(t.get(k), bool)
                                            for k in ("start_ns", "end_ns"))):
            raise ProtocolError(op, "timing", "expected {start_ns, end_ns} integers")
        timing = Timing(t["start_ns"], t["end_ns"])
    if ok:
        return Reply(rid, True, data.get("result"), timing=timing)
    err = data.get("error")
    if not (isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)):
        raise ProtocolError(op, "error", "expected {code, message} strings")
    code: ErrorCode | str
    try:
        code = ErrorCode(err["code"])
    except ValueError:
        code = err["code"]
    return Reply(rid, False, code=code, message=err["message"], timing=timing)
