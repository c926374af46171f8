"""The template store on a plain file (same mmap code as on /dev/daxX.Y in a guest)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tbagent import boundedjson, serve
from tbagent.store import (
    Store,
    StoreError,
    StoreFull,
    cachectl,
)
from tbagent.store import cli as store_cli
from tbagent.store.layout import HWM, HWM_OFF, PAGE, REC, REC_MAGIC, SB, STATE_OFFSET, Kind, State, record_crc
from tbproto import ops as proto_ops

from tests.unit.noncoherent import Fabric, Violation

REPO = Path(__file__).resolve().parents[2]

SIZE = 64 << 20


@pytest.fixture(scope="module", autouse=True)
def cache_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    out = tmp_path_factory.mktemp("lib") / "libcxlcache.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(out),
                    str(REPO / "guest-agent" / "native" / "cxlcache.c")], check=True)
    os.environ["CXLTB_CACHE_LIB"] = str(out)
    import tbagent.store.cachectl as cc

    cc.LIB_PATHS = (str(out),)
    yield


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("tbagent.store.core.LOCK_DIR", tmp_path / "locks")
    path = tmp_path / "dev"
    with open(path, "wb") as fh:
        fh.truncate(SIZE)
    Store.format(str(path), 0, nheads=2, slots=32).close()
    return str(path)


def test_publish_list_read(device: str) -> None:
    with Store(device, 0) as a, Store(device, 1) as b:
        a.publish("hello", [b"x" * 5000, b"meta"], {"fn": "hello"})
        b.publish("json", [os.urandom(70000)])
        names = {r.name: r for r in a.templates()}
        assert set(names) == {"hello", "json"}
        rec = b.find("hello")
        assert b.read_extent(rec.extents[0]) == b"x" * 5000 and rec.payload["meta"] == {"fn": "hello"}
        assert all(e["off"] % 4096 == 0 for r in names.values() for e in r.extents)
        sa, sb_ = a.sb.section(0), a.sb.section(1)
        assert all(sa[0] <= e["off"] < sa[1] for e in names["hello"].extents)
        assert all(sb_[0] <= e["off"] < sb_[1] for e in names["json"].extents)
        assert a.check()["ok"]


def test_duplicate_name_refused(device: str) -> None:
    with Store(device, 0) as a, Store(device, 1) as b:
        a.publish("f", [b"1"])
        with pytest.raises(StoreError, match="already exists"):
            b.publish("f", [b"2"])


def _publisher(device: str, head: int, n: int, lock_dir: str) -> None:
    import tbagent.store.core as core

    core.LOCK_DIR = Path(lock_dir)
    with Store(device, head) as st:
        for i in range(n):
            st.publish(f"h{head}-{i}", [os.urandom(8192 + i)])


def _churn(device: str, head: int, lock_dir: str) -> None:
    """Publish, delete and reclaim forever: killed at a random point of the protocol."""
    import tbagent.store.core as core

    core.LOCK_DIR = Path(lock_dir)
    with Store(device, head) as st:
        i = 0
        while True:
            st.publish(f"churn-{i}", [os.urandom(1 << 20)])
            st.delete(f"churn-{i}")
            st.gc()
            i += 1


def test_two_heads_publish_at_the_same_time(device: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_publisher, args=(device, h, 25, str(tmp_path / "locks"))) for h in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(device, 0) as st:
        report = st.check()
        assert report["ok"], report
        assert report["templates"] == 50


def test_garbage_in_a_record_is_reported_and_others_survive(device: str) -> None:
    with Store(device, 0) as st:
        for i in range(3):
            st.publish(f"t{i}", [bytes([i]) * 4096])
        victim = st.find("t1")
        off = st.sb.slot_offset(0, victim.slot)
        st._write(off + REC.size + 3, b"\xff\xfe garbage")
        report = st.check()
        assert not report["ok"]
        assert [p["status"] for p in report["problems"]] == ["corrupt"]
        assert {r.name for r in st.templates()} == {"t0", "t2"}
        assert st.read_extent(st.find("t2").extents[0]) == b"\x02" * 4096
        # Random bytes over a whole free slot are reported as garbage, not parsed.
        st._write(st.sb.slot_offset(1, 5), os.urandom(4096))
        assert "garbage" in [p["status"] for p in st.check()["problems"]]


def test_half_written_record_is_invisible_and_reclaimed(device: str) -> None:
    with Store(device, 0) as st:
        st.publish("keep", [b"k" * 4096])
        rec = st.publish("torn", [b"t" * 4096])
        # As if the writer died just before its final flag write.
        st.mm[st.sb.slot_offset(0, rec.slot) + STATE_OFFSET: st.sb.slot_offset(0, rec.slot) + STATE_OFFSET + 4] = \
            struct.pack("<I", State.FREE)
        assert {r.name for r in st.templates()} == {"keep"}
        assert [p["status"] for p in st.check()["problems"]] == ["unpublished"]
        assert st.gc()["abandoned_slots"] == 1
        assert st.check()["ok"]
        st.publish("torn", [b"again"])  # its space and name are free again
        assert st.read_extent(st.find("keep").extents[0]) == b"k" * 4096


def test_writer_killed_mid_publish(device: str, tmp_path: Path) -> None:
    with Store(device, 1) as st:
        st.publish("other-head", [b"o" * 4096])
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_churn, args=(device, 0, str(tmp_path / "locks")))
    p.start()
    time.sleep(1.5)
    assert p.is_alive()
    os.kill(p.pid or 0, signal.SIGKILL)
    p.join()
    with Store(device, 1) as st:
        report = st.check()
        bad = [q for q in report["problems"] if q["status"] not in ("unpublished",)]
        assert not bad, report
        assert st.read_extent(st.find("other-head").extents[0]) == b"o" * 4096
    with Store(device, 0) as st:  # the dead writer's head recovers on its next gc
        st.gc()
        assert st.check()["ok"]


def test_store_full_publishes_nothing(device: str) -> None:
    with Store(device, 0) as st:
        st.publish("small", [b"s" * 4096])
        section = st.sb.section_size
        with pytest.raises(StoreFull, match="store full"):
            st.publish("huge", [b"\0" * section])
        assert {r.name for r in st.templates()} == {"small"}
        assert st.check()["ok"]


def test_manifest_full_then_gc(device: str) -> None:
    with Store(device, 0) as st:
        for i in range(32):
            st.publish(f"t{i}", [b"x"])
        with pytest.raises(StoreFull, match="manifest full"):
            st.publish("one-more", [b"x"])
    with Store(device, 1) as other:
        other.delete("t0")  # any head may delete; the owner reclaims
        assert "t0" not in {r.name for r in other.templates()}
    with Store(device, 0) as st:
        assert st.gc()["reclaimed_records"] == 1
        st.publish("one-more", [b"x"])
    with Store(device, 1) as other:
        assert other.gc()["reclaimed_records"] == 1  # the spent delete record
        assert other.check()["ok"]


def test_delete_and_gc_free_space(device: str) -> None:
    with Store(device, 0) as st:
        big = st.sb.section_size // 2
        st.publish("a", [b"\1" * big])
        with pytest.raises(StoreFull):
            st.publish("b", [b"\2" * big + b"!"])
        st.delete("a")
        assert st.gc()["freed_bytes"] >= big
        st.publish("b", [b"\2" * big])


def test_corrupt_superblock_is_a_clear_error(device: str) -> None:
    with open(device, "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x13\x37")
    with pytest.raises(StoreError, match="superblock checksum mismatch"), Store(device, 0) as st:
        st.templates()


def test_serve_replies_to_every_line() -> None:
    lines = ['{"v":1,"id":1,"op":"ping"}', "not json", '{"v":2,"id":3,"op":"ping"}', '{"v":1,"id":4,"op":"nope"}',
             '{"v":1,"id":5,"op":"ping","args":{"x":1}}', "[1,2]"]
    out = io.StringIO()
    serve.serve(io.StringIO("\n".join(lines) + "\n"), out, max_inflight=1)
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["ok"] for r in replies] == [True, False, False, False, False, False]
    assert [r.get("error", {}).get("code") for r in replies[1:]] == ["bad-json", "bad-version", "unknown-op", "bad-args",
                                                                      "bad-request"]
    assert replies[0]["result"]["protocol"] == 1 and all(r["v"] == 1 for r in replies)


def _forge(st: Store, head: int, slot: int, seq: int, kind: int, payload: bytes) -> None:
    """A published record with a valid checksum, as a buggy or hostile head could write it."""
    off = st.sb.slot_offset(head, slot)
    st._write(off + REC.size, payload)
    st._write(off, REC.pack(REC_MAGIC, State.PUBLISHED, seq, kind, head, len(payload), record_crc(seq, kind, head, payload)))


def _names(st: Store) -> set[str]:
    return {r.name for r in st.templates()}


def test_seq_not_reused_after_another_heads_delete_and_gc(device: str) -> None:
    with Store(device, 0) as a, Store(device, 1) as b:
        a.publish("one", [b"1"])
        two = a.publish("two", [b"2"])
        b.delete("two")  # the delete record naming (0, two.seq) stays in head 1's slots
        a.gc()
        three = a.publish("three", [b"3"])
        assert three.seq > two.seq
        assert _names(b) == {"one", "three"}
        a.gc()
        assert _names(a) == {"one", "three"}
        assert b.read_extent(b.find("three").extents[0]) == b"3"
        assert b.check()["ok"]


def test_seq_never_repeats_across_reclaim_and_reopen(device: str) -> None:
    seqs = []
    for i in range(3):
        with Store(device, 0) as a:  # a new Store each time, as after a reboot of the node
            rec = a.publish(f"t{i}", [b"x"])
            seqs.append(rec.seq)
            a.delete(f"t{i}")
            assert a.gc()["reclaimed_records"] == 1  # the template, then its now spent delete record
            assert a.gc()["reclaimed_records"] == 1
        with Store(device, 0) as a:  # no record of head 0 is left
            assert not [r for r in a.scan().records if r.head == 0]
    assert seqs == sorted(set(seqs)), seqs


def test_seq_mark_survives_its_slots_being_reused(device: str) -> None:
    """The stored mark, not the slots, carries the count: fill, reclaim and refill every slot."""
    with Store(device, 0) as a:
        first = [a.publish(f"a{i}", [b"x"]).seq for i in range(16)]
        for i in range(16):
            a.delete(f"a{i}")
        a.gc()
        second = [a.publish(f"b{i}", [b"x"]).seq for i in range(16)]
        assert min(second) > max(first)


def test_seq_without_a_stored_mark_counts_other_heads_deletes(device: str) -> None:
    """A version 1 store has no mark: the delete records that name a head still bound it."""
    with Store(device, 0) as a, Store(device, 1) as b:
        a.publish("one", [b"1"])
        two = a.publish("two", [b"2"])
        b.delete("two")
        a.gc()
        two_slot = a.sb.slot_offset(0, two.slot)
        a.mm[two_slot : two_slot + REC.size] = bytes(REC.size)  # as a version 1 agent left it
        a.mm[HWM_OFF : HWM_OFF + HWM.size] = bytes(HWM.size)
        three = a.publish("three", [b"3"])
        assert three.seq > two.seq and _names(b) == {"one", "three"}


def test_version1_store_is_still_read_and_written(device: str) -> None:
    with Store(device, 0) as a:
        a.publish("old", [b"o"])
        raw = bytearray(a.mm[: SB.size])
        raw[8:12] = struct.pack("<I", 1)  # the version field
        raw[-4:] = struct.pack("<I", zlib.crc32(bytes(raw[:-4])))
        a.mm[: SB.size] = bytes(raw)
        a.mm[SB.size : PAGE] = os.urandom(PAGE - SB.size)  # version 1 never formatted this part
    with Store(device, 1) as b:
        assert b.sb.version == 1
        b.publish("new", [b"n"])
        assert _names(b) == {"old", "new"} and b.check()["ok"]


_OUT_OF_RANGE = """
import json, sys
from tbagent.store import Store, StoreError
out = {}
with Store(sys.argv[1], 0) as st:
    out["check"] = st.check()
    out["names"] = sorted(r.name for r in st.templates())
    for name in ("far", "before", "fine"):
        try:
            out[name] = len(st.read_extent(st.find(name).extents[0]))
        except StoreError as exc:
            out[name] = str(exc)
    for off in (1 << 40, -8192, st.size):
        try:
            st.read_extent({"off": off, "len": 4096, "crc": 0})
        except StoreError as exc:
            out[str(off)] = "refused"
print(json.dumps(out))
"""


def test_out_of_range_extent_is_reported_not_flushed(device: str) -> None:
    with Store(device, 1) as b:
        b.publish("fine", [b"f" * 4096])
        for slot, (name, off) in enumerate((("far", 1 << 40), ("before", -8192)), start=5):
            body = json.dumps({"name": name, "extents": [{"off": off, "len": 4096, "crc": 0}], "meta": {}}).encode()
            _forge(b, 1, slot, 100 + slot, Kind.TEMPLATE, body)
    # In a child process: before the fix the cache flush of such an extent killed it with SIGSEGV.
    env = {**os.environ, "PYTHONPATH": str(REPO / "guest-agent")}
    res = subprocess.run([sys.executable, "-c", _OUT_OF_RANGE, device], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    out = json.loads(res.stdout)
    assert out["names"] == ["fine"] and out["fine"] == 4096
    assert "no template named" in out["far"] and "no template named" in out["before"]
    assert sorted((p["slot"], p["status"]) for p in out["check"]["problems"]) == [(5, "bad-extent"), (6, "bad-extent")]
    assert all(out[str(off)] == "refused" for off in (1 << 40, -8192)) and str(SIZE) in out


_BAD_PAYLOADS: list[tuple[Kind, bytes]] = [
    (Kind.TEMPLATE, b"[]"),
    (Kind.DELETE, b'{"name":"one","seq":1}'),  # no head
    (Kind.TEMPLATE, b"[" * 2000 + b"]" * 2000),
    (Kind.TEMPLATE, b"[" * 4000),  # as deep as a slot allows, never closed
    (Kind.TEMPLATE, b'{"name":"s","extents":"nope","meta":{}}'),
    (Kind.TEMPLATE, b'{"name":"m","extents":[],"meta":[]}'),
    (Kind.TEMPLATE, b'{"name":7,"extents":[],"meta":{}}'),
    (Kind.TEMPLATE, b'{"name":"b","extents":[{"off":true,"len":1,"crc":0}],"meta":{}}'),
    (Kind.DELETE, b'{"name":"one","head":9,"seq":1}'),
    (Kind.DELETE, b'{"name":"one","head":0,"seq":"1"}'),
    (Kind.TEMPLATE, b'{"name":"deep","extents":[],"meta":' + b'{"a":' * 40 + b"1" + b"}" * 41),
    (Kind.TEMPLATE, b"\xff\xfe"),
]


def test_checksummed_bad_payloads_are_reported_and_skipped(device: str) -> None:
    with Store(device, 0) as a, Store(device, 1) as b:
        a.publish("one", [b"1" * 4096])
        for i, (kind, body) in enumerate(_BAD_PAYLOADS):
            _forge(b, 1, 10 + i, 50 + i, kind, body)
        for st in (a, b):
            assert _names(st) == {"one"}
            report = st.check()
            assert not report["ok"] and report["templates"] == 1
            assert sorted(p["slot"] for p in report["problems"]) == [10 + i for i in range(len(_BAD_PAYLOADS))]
            assert {p["status"] for p in report["problems"]} <= {"invalid", "corrupt", "bad-extent"}
            st.gc()
        b.publish("two", [b"2"])  # neither the bad slots nor their sequence numbers are reused
        assert b.find("two").seq > 50 + len(_BAD_PAYLOADS) - 1
        a.delete("one")
        assert _names(b) == {"two"}
        assert a.read_extent(a.find("two").extents[0]) == b"2"


@pytest.fixture
def as_head1(device: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`tbagent store` operations run as head 1 of the test device, whatever the MHD name."""
    monkeypatch.setattr(store_cli, "open_store", lambda mhd, head=None: Store(device, 1 if head is None else head))
    return device


@pytest.mark.parametrize("bad", ["../../x", "/ABS/x", "sub/x", "..", "a\0b", ""])
def test_get_out_refuses_names_outside_the_directory(as_head1: str, tmp_path: Path, bad: str) -> None:
    bad = bad.replace("/ABS", str(tmp_path / "abs"))
    (tmp_path / "abs").mkdir()
    out = tmp_path / "a" / "b" / "out"
    with Store(as_head1, 0) as a:  # another node's agent, buggy or hostile, skipping put's check
        a.publish("evil", [b"pwned", b"ok"], {"files": [bad, "fine"]})
    with pytest.raises(StoreError, match="plain file name"):
        store_cli.op_get("mhd0", "evil", str(out))
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "locks")
    assert written == ["dev"], written  # nothing at all, not even the good name
    with pytest.raises(StoreError, match="plain file name"):
        store_cli.op_put("mhd0", "evil2", [as_head1], {"files": [bad]})


def test_get_out_replaces_a_symlink_instead_of_following_it(as_head1: str, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "snap.img").symlink_to(target)
    (out / "extent1").mkdir()  # a name in the way is an error, not a write through it
    with Store(as_head1, 0) as a:
        a.publish("t", [b"data"], {"files": ["snap.img"]})
        a.publish("u", [b"one", b"two"], {"files": ["u.img"]})
    got = store_cli.op_get("mhd0", "t", str(out))
    assert got["bytes"] == 4 and target.read_bytes() == b"precious"
    assert not (out / "snap.img").is_symlink() and (out / "snap.img").read_bytes() == b"data"
    with pytest.raises(StoreError, match="writing u into"):
        store_cli.op_get("mhd0", "u", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["extent1", "snap.img", "u.img"]  # no temporary left


def test_get_out_refuses_duplicate_names(as_head1: str, tmp_path: Path) -> None:
    with Store(as_head1, 0) as a:
        a.publish("d", [b"1", b"2"], {"files": ["x", "x"]})
    with pytest.raises(StoreError, match="twice"):
        store_cli.op_get("mhd0", "d", str(tmp_path / "out"))


def _serve(lines: list[str]) -> list[dict[str, Any]]:
    out = io.StringIO()
    assert serve.serve(io.StringIO("\n".join(lines) + "\n"), out, max_inflight=1) == 0
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_serve_malformed_requests_get_errors_and_serving_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(serve.OPS, "weird", serve.Handler(proto_ops.Ping, lambda _req: {"x": object()}))  # a result JSON cannot carry
    monkeypatch.setattr(serve, "MAX_LINE", 200_000, raising=False)
    lines = ['{"v":1,"id":1,"op":[]}', "[" * 100_000, '{"v":1,"id":[1],"op":"ping"}', '{"v":1,"id":2,"op":{"a":1}}',
             '{"v":[[[]]],"id":3,"op":"ping"}', '{"v":1,"id":4,"op":"ping","args":[]}', '{"v":1,"id":5,"op":"weird"}',
             '{"v":1,"id":6,"op":"ping","args":' + "[" * 50 + "]" * 50 + "}", "[" * 300_000, '"\\ud800"', "NaN",
             '{"v":1,"id":7,"op":"ping"}']
    replies = _serve(lines)
    assert len(replies) == len(lines) and all(r["v"] == 1 and set(r) >= {"id", "ok"} for r in replies)
    assert [r["ok"] for r in replies] == [False] * (len(lines) - 1) + [True]
    assert [r["error"]["code"] for r in replies[:-1]] == ["unknown-op", "bad-json", "bad-request", "unknown-op", "bad-version",
                                                         "bad-request", "internal", "bad-json", "too-large", "bad-request",
                                                         "bad-request"]
    assert [r["id"] for r in replies] == [1, None, None, 2, 3, 4, 5, None, None, None, None, 7]


def test_serve_through_a_pipe_survives_bad_bytes() -> None:
    """The real `tbagent serve` process: invalid UTF-8 and deep nesting, then a ping still answered."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "guest-agent")}
    feed = b'{"v":1,"id":1,"op":[]}\n\xff\xfe\x00garbage\n' + b"[" * 100_000 + b'\n{"v":1,"id":9,"op":"ping"}\n'
    res = subprocess.run([sys.executable, "-m", "tbagent.cli", "serve"], input=feed, capture_output=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    replies = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["ok"] for r in replies] == [False, False, False, True] and replies[-1]["id"] == 9


NC_SIZE = 8 << 20


@pytest.fixture
def fabric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fabric:
    """Every Store opened in the test gets its own non-coherent cache over the device."""
    fab = Fabric()
    monkeypatch.setattr(cachectl, "attach", fab.attach)
    return fab


@pytest.fixture
def nc_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fabric: Fabric) -> str:
    monkeypatch.setattr("tbagent.store.core.LOCK_DIR", tmp_path / "locks")
    path = tmp_path / "ncdev"
    with open(path, "wb") as fh:
        fh.truncate(NC_SIZE)
    Store.format(str(path), 0, nheads=2, slots=32).close()
    return str(path)


def test_two_heads_on_a_noncoherent_device(nc_device: str, fabric: Fabric) -> None:
    with Store(nc_device, 0) as a, Store(nc_device, 1) as b:  # both attached (caches filled) up front
        blob = os.urandom(70000)
        a.publish("one", [b"1" * 5000, blob])
        assert b.read_extent(b.find("one").extents[1]) == blob
        b.publish("two", [b"2" * 4096])
        assert a.read_extent(a.find("two").extents[0]) == b"2" * 4096
        b.delete("one")
        assert a.gc()["reclaimed_records"] == 1  # A sees B's delete record
        a.publish("three", [b"3" * 8192])  # into the slot and the space "one" had, which B has read before
        assert b.read_extent(b.find("three").extents[0]) == b"3" * 8192
        assert b.gc()["reclaimed_records"] == 1
        assert {r.name for r in a.templates()} == {"two", "three"} and a.check()["ok"] and b.check()["ok"]
    ops = [op for _, op, _, _ in fabric.events]
    assert ops.count("publish") >= 5 and ops.count("invalidate") > ops.count("publish")


@pytest.mark.parametrize("scenario", ["test_publish_list_read", "test_duplicate_name_refused", "test_manifest_full_then_gc",
                                      "test_delete_and_gc_free_space", "test_seq_not_reused_after_another_heads_delete_and_gc",
                                      "test_checksummed_bad_payloads_are_reported_and_skipped"])
def test_scenarios_hold_on_a_noncoherent_device(nc_device: str, scenario: str) -> None:
    globals()[scenario](nc_device)


def test_noncoherent_fake_catches_a_missing_flush(nc_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake has teeth: the store with the flush after a write deleted fails on it."""
    def write_without_flush(self: Store, off: int, data: bytes | bytearray | memoryview) -> None:
        self.mm[off : off + len(data)] = data

    with Store(nc_device, 0) as a:
        monkeypatch.setattr(Store, "_write", write_without_flush)
        with pytest.raises(Violation, match="written but not flushed"):
            a.publish("one", [b"1" * 4096])


def test_noncoherent_fake_catches_a_missing_invalidate(nc_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_without_invalidate(self: Store, off: int, length: int) -> bytes:
        return bytes(self.mm[off : off + length])

    with Store(nc_device, 0) as a, Store(nc_device, 1) as b:
        b.templates()
        a.publish("one", [b"1" * 4096])
        monkeypatch.setattr(Store, "_read", read_without_invalidate)
        with pytest.raises(Violation, match="since this view last invalidated"):
            b.templates()


def test_noncoherent_fake_catches_a_flag_before_its_data(nc_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data flush that comes only after the publication flag is as bad as none."""
    flushes: list[tuple[int, int]] = []
    real_write = Store._write

    def deferred_data_flush(self: Store, off: int, data: bytes | bytearray | memoryview) -> None:
        if off >= self.sb.data_off:
            self.mm[off : off + len(data)] = data
            flushes.append((off, len(data)))
        else:
            real_write(self, off, data)

    with Store(nc_device, 0) as a:
        monkeypatch.setattr(Store, "_write", deferred_data_flush)
        with pytest.raises(Violation, match="written but not flushed"):
            a.publish("one", [b"1" * 4096])
        assert flushes


def test_bounded_json_counts_only_brackets_outside_strings() -> None:
    assert boundedjson.loads('{"a":"[[[[{{{{\\"[[[["}', 100, 1) == {"a": '[[[[{{{{"[[[['}
    assert boundedjson.loads("[[1],[2]]", 100, 2) == [[1], [2]]
    for text, why in (("[[[1]]]", "depth 3"), ("[" * 5000, "depth 5000"), ("1" * 101, "exceeds 100"), (b"\xff", "UTF-8")):
        with pytest.raises(ValueError, match=why):
            boundedjson.loads(text, 100 if len(text) < 200 else 10_000, 2)
