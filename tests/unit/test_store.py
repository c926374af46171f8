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
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "guest-agent"))

from tbagent import serve  # noqa: E402
from tbagent.store import Store, StoreError, StoreFull  # noqa: E402
from tbagent.store.layout import REC, STATE_OFFSET, State  # noqa: E402

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
    serve.serve(io.StringIO("\n".join(lines) + "\n"), out)
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["ok"] for r in replies] == [True, False, False, False, False, False]
    assert [r.get("error", {}).get("code") for r in replies[1:]] == ["bad-json", "bad-version", "unknown-op", "bad-args",
                                                                      "bad-request"]
    assert replies[0]["result"]["protocol"] == 1 and all(r["v"] == 1 for r in replies)
