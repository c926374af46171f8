"""tbproto, the wire types shared by host and agent, and the agent's dispatch through them:
typed decoding with errors naming op and field, the error-code table, the catalogue, and
concurrent requests on one `tbagent serve`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from tbagent import serve
from tbagent.errors import code_of
from tbagent.functions import CATALOG
from tbagent.snap.instance import InstanceError
from tbagent.store import StoreError
from tbproto import catalog, meminfo
from tbproto import ops as proto
from tbproto.codec import ProtocolError, decode, decode_as, encode
from tbproto.envelope import Reply, Timing, parse_reply
from tbproto.errors import EXIT_CODES, ErrorCode
from tbproto.records import SandboxRun, run_records


def test_decode_checks_every_field_and_names_it() -> None:
    req = decode(proto.StorePut, {"mhd": "mhd0", "name": "t", "files": ["/a"], "meta": {"k": 1}}, "store.put")
    assert req == proto.StorePut("mhd0", "t", ("/a",), {"k": 1})
    with pytest.raises(ProtocolError, match=r"store.put: args.files\[0\]: expected a string, got int") as info:
        decode(proto.StorePut, {"mhd": "mhd0", "name": "t", "files": [3]}, "store.put")
    assert info.value.op == "store.put" and info.value.field == "args.files[0]"
    with pytest.raises(ProtocolError, match=r"args.name: missing"):
        decode(proto.StorePut, {"mhd": "mhd0", "files": []}, "store.put")
    with pytest.raises(ProtocolError, match=r"args.bogus: unexpected field"):
        decode(proto.StoreFormat, {"mhd": "mhd0", "bogus": 1}, "store.format")
    with pytest.raises(ProtocolError, match=r"args.count: expected an integer, got bool"):
        decode(proto.SnapRun, {"name": "s", "mode": "criu", "count": True}, "snap.run")
    with pytest.raises(ProtocolError, match=r"args.mode: 'critu' is not one of cold, criu, lazy, template"):
        decode(proto.SnapRun, {"name": "s", "mode": "critu"}, "snap.run")
    assert decode(proto.SnapRun, {"name": "s", "mode": "lazy", "sandbox": "pool"}, "snap.run").sandbox is proto.Placement.POOL
    with pytest.raises(ProtocolError, match="expected an object, got list"):
        decode(proto.Ping, [], "ping")


def test_replies_may_carry_new_fields_but_not_wrong_ones() -> None:
    entries = decode_as(list[proto.StoreEntry], [{"name": "a", "head": 0, "seq": 1, "bytes": 6, "new": 1,
                                                   "extents": [{"off": 0, "len": 6, "crc": 9}]}], "store.list")
    assert entries == [proto.StoreEntry("a", 0, 1, 6, (proto.Extent(0, 6, 9),))]
    with pytest.raises(ProtocolError, match=r"result\[0\].extents\[0\].crc: expected an integer, got str"):
        decode_as(list[proto.StoreEntry], [{"name": "a", "head": 0, "seq": 1, "bytes": 6,
                                            "extents": [{"off": 0, "len": 6, "crc": "x"}]}], "store.list")


def test_encode_leaves_out_what_was_not_given() -> None:
    assert encode(proto.SnapRun("s", proto.Mode.CRIU, count=2)) == {"name": "s", "mode": "criu", "count": 2}
    assert encode(proto.StorePut("m", "n", ("/a",))) == {"mhd": "m", "name": "n", "files": ["/a"]}


def test_reply_envelope_is_checked() -> None:
    ok = parse_reply({"v": 1, "id": 3, "ok": True, "result": [1], "timing": {"start_ns": 5, "end_ns": 2_000_005}})
    assert ok == Reply(3, True, [1], timing=Timing(5, 2_000_005)) and ok.timing is not None and ok.timing.op_ms == 2.0
    err = parse_reply({"v": 1, "id": 3, "ok": False, "error": {"code": "StoreError", "message": "no"}})
    assert err.code is ErrorCode.STORE and err.message == "no"
    assert parse_reply({"v": 1, "id": 3, "ok": False, "error": {"code": "new-code", "message": "m"}}).code == "new-code"
    for bad, field in (({"v": 2, "id": 1, "ok": True}, "v"), ({"v": 1, "id": [1], "ok": True}, "id"),
                       ({"v": 1, "id": 1, "ok": "yes"}, "ok"), ({"v": 1, "id": 1, "ok": False, "error": "x"}, "error"),
                       ({"v": 1, "id": 1, "ok": True, "timing": {"start_ns": 1.5, "end_ns": 2}}, "timing")):
        with pytest.raises(ProtocolError) as info:
            parse_reply(bad)
        assert info.value.field == field


def test_every_error_code_has_an_exit_status_and_agent_exceptions_map_to_codes() -> None:
    assert set(EXIT_CODES) == set(ErrorCode)
    assert code_of(StoreError("x")) is ErrorCode.STORE and code_of(InstanceError("x")) is ErrorCode.INSTANCE
    assert code_of(TimeoutError()) is ErrorCode.TIMEOUT and code_of(FileNotFoundError()) is ErrorCode.OS
    assert code_of(TypeError()) is ErrorCode.INTERNAL and code_of(KeyError()) is ErrorCode.INTERNAL
    assert code_of(ProtocolError("op", "f", "m")) is ErrorCode.BAD_ARGS


def test_the_agent_registry_is_the_catalogue() -> None:
    assert sorted(CATALOG) == list(catalog.names())
    assert set(serve.OPS) == set(proto.OPS)


def test_meminfo_is_kib() -> None:
    text = "MemTotal:        2014064 kB\nMemAvailable:    1500000 kB\nHugePages_Total:       0\nbogus line\nX: y kB\n"
    assert meminfo.parse(text) == {"MemTotal": 2014064, "MemAvailable": 1500000, "HugePages_Total": 0}


def test_records_are_typed() -> None:
    inst, summary = run_records([{"ok": True, "instance": 0, "startup_ms": 1, "faults": {"minflt": 3}},
                                 {"summary": True, "pss_local_kib": 10, "template": {"nr_vmas": 2}}])
    assert inst[0].startup_ms == 1.0 and inst[0].faults is not None and inst[0].faults.minflt == 3
    assert summary is not None and summary.pss_local_kib == 10.0 and summary.template is not None
    with pytest.raises(ProtocolError, match=r"result\[0\].startup_ms: expected a number"):
        run_records([{"ok": True, "startup_ms": "fast"}])
    run = decode(SandboxRun, {"ok": True, "reply": {"ok": True, "run_s": 0.5}, "timings": {"create": 0.1}}, "sandbox.run",
                 strict=False)
    assert run.reply.run_s == 0.5


# --- serve ---------------------------------------------------------------------------------

def _serve(lines: list[str], **kw: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    assert serve.serve(io.StringIO("\n".join(lines) + "\n"), out, **kw) == 0
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_a_bad_argument_names_the_field_and_a_type_error_inside_an_op_is_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(_req: object) -> object:
        return len(None)  # type: ignore[arg-type]  # a bug: TypeError

    monkeypatch.setitem(serve.OPS, "store.gc", serve.Handler(proto.StoreGc, buggy))
    replies = _serve(['{"v":1,"id":1,"op":"store.list","args":{"mhd":3}}', '{"v":1,"id":2,"op":"store.gc","args":{"mhd":"m"}}'],
                     max_inflight=1)
    assert replies[0]["error"]["code"] == "bad-args" and "args.mhd" in replies[0]["error"]["message"]
    assert replies[1]["error"]["code"] == "internal" and "TypeError" in replies[1]["error"]["message"]
    assert all(set(r["timing"]) == {"start_ns", "end_ns"} for r in replies)


def test_catalog_op_and_timing() -> None:
    (reply,) = _serve(['{"v":1,"id":"c","op":"catalog"}'])
    assert reply["ok"] and reply["id"] == "c" and reply["result"] == {"protocol": 1, "functions": list(catalog.names())}
    assert reply["timing"]["end_ns"] >= reply["timing"]["start_ns"]


def test_requests_run_concurrently_and_replies_carry_their_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three slow requests in flight at once: all three end after about one op's time, each reply
    whole on its own line and matched by id; at most max_inflight run together."""
    running, most, lock = [0], [0], threading.Lock()

    def slow(req: proto.StoreGc) -> dict[str, Any]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return {"mhd": req.mhd}

    monkeypatch.setitem(serve.OPS, "store.gc", serve.Handler(proto.StoreGc, slow))
    lines = [json.dumps({"v": 1, "id": i, "op": "store.gc", "args": {"mhd": f"m{i}"}}) for i in range(3)]
    t0 = time.monotonic()
    replies = _serve(lines, max_inflight=3)
    assert time.monotonic() - t0 < 0.8 and most[0] == 3
    assert sorted((r["id"], r["result"]["mhd"]) for r in replies) == [(0, "m0"), (1, "m1"), (2, "m2")]
    most[0] = 0
    _serve(lines, max_inflight=2)
    assert most[0] == 2


def test_the_image_key_covers_tbproto(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest image carries tbproto next to tbagent: a protocol change must rebuild it."""
    from testbed.artifacts import cache, image

    hashed: list[Path] = []
    real = cache.hash_files

    def spy(paths: Iterable[Path], root: Path, extra: Iterable[str] = ()) -> str:
        paths = list(paths)
        hashed.extend(paths)
        return real(paths, root, extra)

    monkeypatch.setattr(cache, "hash_files", spy)
    image.image_key("bookworm")
    assert image.PROTOCOL_DIR in hashed and (image.PROTOCOL_DIR / "envelope.py").is_file()


def test_a_pool_sandbox_run_decodes_with_its_numeric_sandbox_id() -> None:
    # The shape the pool daemon answers (tbagent.sandbox.server's lease reply plus the run):
    # its sandbox id is a number, which the host once refused, failing every pool invocation.
    reply = {"ok": True, "lease": "l-1", "sandbox": 3, "fresh": False, "waited_s": 0.0,
             "timings": {"acquire": 0.001}, "reply": {"ok": True}}
    run = decode_as(SandboxRun, reply, "sandbox.run")
    assert run.sandbox == 3 and run.lease == "l-1"
    fresh = decode_as(SandboxRun, {"ok": True, "timings": {}, "reply": {"ok": True}, "destroy_s": 0.1}, "sandbox.fresh")
    assert fresh.sandbox is None


def test_json_fields_pass_through_and_only_dataclasses_decode() -> None:
    # A field typed Json (tbproto.jsontypes) is kept as the agent sent it, nested values and all.
    event = {"a": [1, {"b": None}], "c": "x"}
    req = decode(proto.SnapRun, {"name": "s", "mode": "cold", "event": event}, "snap.run")
    assert req.event == event
    run = decode_as(SandboxRun, {"ok": True, "reply": {"ok": True, "result": [1, "two"]}}, "sandbox.run")
    assert run.reply.result == [1, "two"]
    # decode() of something that is not a dataclass is a bug in a type definition, not bad input
    with pytest.raises(TypeError, match="cannot decode"):
        decode(dict, {}, "x")


def test_the_agents_light_modules_do_not_load_typing_for_their_json_names() -> None:
    # The crun runner imports tbagent.sandbox.proto on every start: its Json names are for the
    # type checker only (importing typing costs tens of ms under TCG).
    root = Path(__file__).resolve().parents[2]
    code = "import sys, tbagent.sandbox.proto; print('tbproto.jsontypes' in sys.modules, 'typing' in sys.modules)"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": f"{root / 'guest-agent'}:{root / 'protocol'}"})
    assert out.stdout.split() == ["False", "False"]
