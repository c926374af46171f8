"""Live migration of an llm generation (tbagent/llm/migrate.py): for each method B's continuation
is token for token what one unmigrated run of llm.Model makes; kv-cxl continues on the shared pages
themselves (read-only, no copy) and deletes its record; kv-net refuses a wrong secret, a truncated
or corrupted stream and an oversized preamble, and a dead sender gives a timeout error; the bytes
figures equal sizes computed here from the config. The device is a plain file, as in test_store."""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tbagent.functions import llm
from tbagent.llm import migrate
from tbagent.llm.migrate import Method, MigrateError
from tbagent.store import Store

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PRESET = "tiny"
CFG = llm.Config.from_json({**llm.PRESETS[PRESET].to_json(), "seed": 5})
PROMPT = "CXL!"
CONTEXT, GENERATED, MORE = 22, 5, 9
MODEL_ARGS: dict[str, Any] = {"preset": PRESET, "dtype": "float32", "seed": 5}


def reference() -> list[int]:
    """One unmigrated run, made here with llm.Model: the prompt is BOS and 'CXL!' repeated."""
    ids = [256, *(b"CXL!" * 6)[: CONTEXT - 1]]
    assert len(ids) == CONTEXT
    return llm.Model(CFG, llm.tensors(CFG)).generate(ids, GENERATED + MORE)


REF = reference()


def kv_size(length: int) -> int:
    return CFG.layers * CFG.heads * length * CFG.head_dim * 4 * 2


def ref_header() -> bytes:
    """The header A's cache exports, from a cache made here by an unmigrated run."""
    model = llm.Model(CFG, llm.tensors(CFG))
    cache = model.new_cache()
    model.generate([256, *(b"CXL!" * 6)[: CONTEXT - 1]], GENERATED, cache)
    return cache.export()[0]


@pytest.fixture(scope="module", autouse=True)
def cache_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    out = tmp_path_factory.mktemp("lib") / "libcxlcache.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(out),
                    str(REPO / "guest-agent" / "native" / "cxlcache.c")], check=True)
    import tbagent.store.cachectl as cc

    saved, cc.LIB_PATHS = cc.LIB_PATHS, (str(out),)
    yield
    cc.LIB_PATHS = saved


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("tbagent.store.core.LOCK_DIR", tmp_path / "locks")
    path = tmp_path / "dev"
    with open(path, "wb") as fh:
        fh.truncate(16 << 20)
    Store.format(str(path), 0, nheads=2, slots=8).close()
    return str(path)


def out(method: Method, **kw: Any) -> dict[str, Any]:
    args = {"prompt": PROMPT, "context": CONTEXT, "generated": GENERATED, "mhd": None, "bind": None, **MODEL_ARGS, **kw}
    return migrate.migrate_out(method, **args)


def into(method: Method, handle: Any, **kw: Any) -> dict[str, Any]:
    return migrate.migrate_in(method, handle, **{"tokens": MORE, "mhd": None, **MODEL_ARGS, **kw})


def test_tokens_continues_exactly() -> None:
    handle = out(Method.TOKENS)
    assert handle["generated"] == REF[:GENERATED]
    assert handle["tokens"][CONTEXT:] == REF[:GENERATED] and len(handle["tokens"]) == CONTEXT + GENERATED
    res = into(Method.TOKENS, json.loads(json.dumps(handle)))
    assert res["tokens"] == REF[GENERATED:]
    assert res["bytes"]["net"] == len(json.dumps(handle["tokens"]).replace(" ", ""))
    down = res["downtime"]
    assert down["total_s"] == pytest.approx(down["export_s"] + down["import_s"] + down["first_token_s"])


def test_kv_net_continues_exactly_and_counts_bytes() -> None:
    handle = out(Method.KV_NET, bind="127.0.0.1", timeout_s=10)
    header = len(ref_header())
    length = CONTEXT + GENERATED - 1
    assert handle["bytes"]["kv"] == kv_size(length) and handle["bytes"]["header"] == header
    res = into(Method.KV_NET, handle)
    assert res["tokens"] == REF[GENERATED:]
    framing = 4 + 4 + 8 + 8  # magic, header length, k length, v length
    assert res["bytes"]["kv"] == kv_size(length) and res["bytes"]["header"] == header
    assert res["bytes"]["net"] == 16 + framing + header + kv_size(length) + 1  # secret ... ack
    sent = migrate.status(handle["id"], wait_s=5)
    assert sent["state"] == "sent" and sent["rejected"] == 0
    assert sent["bytes"] == framing + header + kv_size(length)


def test_kv_cxl_continues_exactly_and_deletes(device: str) -> None:
    handle = out(Method.KV_CXL, mhd=device, head=0)
    with Store(device, 1) as st:
        (rec,) = st.templates()
        assert rec.name == handle["kv-cxl"]["record"] and rec.head == 0
    res = into(Method.KV_CXL, handle, mhd=device, head=1)
    assert res["tokens"] == REF[GENERATED:]
    kv = kv_size(CONTEXT + GENERATED - 1)
    assert res["bytes"]["kv"] == kv and res["bytes"]["cxl_read"] == kv * (1 + MORE)
    assert res["bytes"]["net"] == len(json.dumps(handle, separators=(",", ":")))
    with Store(device, 0) as st:
        assert st.templates() == []
        assert st.check()["ok"]
    with pytest.raises(Exception, match="no template named"):
        into(Method.KV_CXL, handle, mhd=device, head=1)


def test_kv_cxl_is_zero_copy_and_read_only(device: str) -> None:
    handle = out(Method.KV_CXL, mhd=device, head=0)
    with Store(device, 1) as st:
        with migrate.mapped_kv(st, handle["kv-cxl"]["record"], CFG) as (cache, maps):
            k_map, v_map = (np.frombuffer(m, dtype=np.uint8) for m in maps)
            assert np.shares_memory(cache.past_k, k_map) and np.shares_memory(cache.past_v, v_map)
            assert not cache.past_k.flags.writeable and not cache.past_v.flags.writeable
            assert all(len(m) % (2 << 20) == 0 for m in maps)
            with pytest.raises(ValueError, match="read-only"):
                cache.past_k[0, 0, 0, 0] = 1.0
            del cache, k_map, v_map


def test_kv_cxl_refuses_a_corrupted_record(device: str) -> None:
    handle = out(Method.KV_CXL, mhd=device, head=0)
    with Store(device, 1) as st:
        off = st.find(handle["kv-cxl"]["record"]).extents[1]["off"]
    with open(device, "r+b") as fh:
        fh.seek(off + 100)
        byte = fh.read(1)
        fh.seek(off + 100)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(MigrateError, match="CRC"):
        into(Method.KV_CXL, handle, mhd=device, head=1)


def test_kv_net_refuses_a_wrong_secret_then_serves_the_right_one() -> None:
    handle = out(Method.KV_NET, bind="127.0.0.1:0", timeout_s=10)
    wrong = {**handle, "kv-net": {**handle["kv-net"], "secret": "00" * 16}}
    with pytest.raises(MigrateError, match="closed the connection"):
        into(Method.KV_NET, wrong, timeout_s=5)
    assert migrate.status(handle["id"])["state"] == "pending"
    assert into(Method.KV_NET, handle)["tokens"] == REF[GENERATED:]
    sent = migrate.status(handle["id"], wait_s=5)
    assert sent["state"] == "sent" and sent["rejected"] == 1


def serve_once(reply: Callable[[socket.socket], None]) -> tuple[int, Callable[[], None]]:
    """A one-connection fake sender; the returned join() re-raises what the thread raised."""
    lst = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn, _ = lst.accept()
            with conn:
                conn.settimeout(5)
                migrate.recv_exact(conn, 16, "secret")
                reply(conn)
        except BaseException as exc:
            errors.append(exc)
        finally:
            lst.close()

    t = threading.Thread(target=run)
    t.start()

    def join() -> None:
        t.join(10)
        assert not t.is_alive() and not errors, errors

    return lst.getsockname()[1], join


def real_stream() -> bytes:
    model = llm.Model(CFG, llm.tensors(CFG))
    cache = model.new_cache()
    model.generate([256, *(b"CXL!" * 6)[: CONTEXT - 1]], GENERATED, cache)
    header, k, v = cache.export()
    kb, vb = b"".join(k), b"".join(v)
    return migrate.WIRE.pack(migrate.MAGIC, len(header), len(kb), len(vb)) + header + kb + vb


def fake_handle(port: int) -> dict[str, Any]:
    handle = out(Method.KV_NET, bind="127.0.0.1", timeout_s=0.5)
    return {**handle, "kv-net": {**handle["kv-net"], "port": port}}


@pytest.mark.parametrize(("stream", "match"), [
    (lambda s: s[:-100], "stream ended in the values"),
    (lambda s: s[:300] + bytes([s[300] ^ 1]) + s[301:], "CRC-32"),
    (lambda s: migrate.WIRE.pack(migrate.MAGIC, 10, 1 << 40, 1 << 40) + s[migrate.WIRE.size:], "bad preamble"),
    (lambda s: b"XXXX" + s[4:], "bad preamble"),
])
def test_kv_net_refuses_a_bad_stream(stream: Callable[[bytes], bytes], match: str) -> None:
    data = stream(real_stream())
    port, join = serve_once(lambda conn: conn.sendall(data))
    with pytest.raises(MigrateError, match=match):
        into(Method.KV_NET, fake_handle(port), timeout_s=5)
    join()


def test_kv_net_dead_sender_times_out() -> None:
    lst = socket.create_server(("127.0.0.1", 0))  # listens (the kernel accepts) but never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="before the timeout"):
            into(Method.KV_NET, fake_handle(lst.getsockname()[1]), timeout_s=0.4)
        assert 0.35 < time.monotonic() - t0 < 1.5
    finally:
        lst.close()


def test_kv_net_sender_outcome_is_kept_on_timeout() -> None:
    handle = out(Method.KV_NET, bind="127.0.0.1", timeout_s=0.2)
    sent = migrate.status(handle["id"], wait_s=5)
    assert sent["state"] == "timeout" and "within 0.2 s" in sent["error"]
    with pytest.raises(OSError, match="cannot connect to the sender"):
        into(Method.KV_NET, handle, timeout_s=1)
    with pytest.raises(ValueError, match="no kv-net sender"):
        migrate.status("ff" * 16)


@pytest.mark.parametrize(("change", "match"), [
    (lambda h: {**h, "config": {**h["config"], "seed": 6}}, "another model config"),
    (lambda h: {**h, "config": {**h["config"], "dim": "x"}}, "config is invalid"),
    (lambda h: {**h, "method": "kv-net"}, "method"),
    (lambda h: {**h, "format": "other"}, "not a tb-llm-migrate"),
    (lambda h: {**h, "tokens": [*h["tokens"][:-1], CFG.vocab]}, "ids in"),
    (lambda h: {**h, "tokens": [1] * (CFG.max_ctx + 1)}, "ids in"),
    (lambda h: {**h, "tokens": [True, 1]}, "ids in"),
    (lambda h: {**h, "kv_length": 3}, "kv_length"),
    (lambda h: {**h, "kv-cxl": {"record": "someone-else"}}, "record"),
    (lambda h: [h], "not a"),
])
def test_an_untrusted_handle_is_checked(change: Callable[[dict[str, Any]], Any], match: str) -> None:
    handle = {**out(Method.TOKENS), "method": "kv-cxl", "kv-cxl": {"record": ""}}
    handle["kv-cxl"] = {"record": migrate.RECORD_PREFIX + handle["id"]}
    with pytest.raises(MigrateError, match=match):
        migrate.check_handle(change(handle), Method.KV_CXL, CFG)
    assert migrate.check_handle(handle, Method.KV_CXL, CFG).history == handle["tokens"]


def test_continuation_must_fit_max_ctx() -> None:
    handle = out(Method.TOKENS)
    room = CFG.max_ctx - (CONTEXT + GENERATED - 1)
    assert len(into(Method.TOKENS, handle, tokens=room)["tokens"]) == room
    with pytest.raises(ValueError, match="fit max_ctx"):
        into(Method.TOKENS, handle, tokens=room + 1)


def test_cli_out_then_in(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    migrate.register(parser.add_subparsers(dest="verb", required=True))
    model = ["--preset", PRESET, "--seed", "5", "--method", "tokens"]
    args = parser.parse_args(["llm-migrate", "out", *model, "--prompt", PROMPT, "--context", str(CONTEXT),
                              "--generated", str(GENERATED)])
    assert args.fn(args) == 0
    handle_text = capsys.readouterr().out
    assert handle_text.count("\n") == 1
    monkeypatch.setattr("sys.stdin", io.StringIO(handle_text))
    args = parser.parse_args(["llm-migrate", "in", *model, "--handle", "-", "--tokens", str(MORE)])
    assert args.fn(args) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == REF[GENERATED:]
    args = parser.parse_args(["llm-migrate", "in", *model, "--handle", "[1", "--tokens", "1"])
    assert args.fn(args) != 0
    assert "tbagent llm-migrate:" in capsys.readouterr().err
