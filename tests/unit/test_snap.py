"""tbagent.snap without a VM: the uAPI layouts against the C header, how a dump is split into
template areas, the image-set writer, smaps parsing and the snapshot tar check."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tarfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tbagent.snap import cli, images, metrics, mmt, snapshot
from tbagent.store import Store, StoreError
from tbagent.store import cli as store_cli

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
PAGE = images.PAGE


def test_uapi_layouts_match_the_kernel_header(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(REPO / "kernel-patches" / "selftests"), "include/linux/mm_template.h"], check=True)
    src = tmp_path / "sz.c"
    src.write_text("#include <stdio.h>\n#include <linux/mm_template.h>\n"
                   "int main(void){printf(\"%zu %zu %zu %zu %lu %lu %lu\\n\", sizeof(struct mmt_area),"
                   " sizeof(struct mmt_register), sizeof(struct mmt_info), sizeof(struct mmt_remove),"
                   " (unsigned long)MMT_IOC_REGISTER, (unsigned long)MMT_IOC_INFO, (unsigned long)MMT_IOC_REMOVE);}\n")
    exe = tmp_path / "sz"
    subprocess.run(["gcc", "-I", str(REPO / "kernel-patches" / "selftests" / "include"), "-o", str(exe), str(src)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert got == [mmt.AREA.size, mmt.REGISTER.size, mmt.INFO.size, mmt.REMOVE.size,
                   mmt.IOC_REGISTER, mmt.IOC_INFO, mmt.IOC_REMOVE]


@pytest.mark.parametrize("name", ["", "a" * 64, "has space", "slash/no", "ünï"])
def test_bad_template_names(name: str) -> None:
    with pytest.raises(ValueError, match="bad mm-template name"):
        mmt.check_name(name)


def vma(start: int, end: int, prot: int = 3, flags: int = 0x22, status: int = 0x201) -> dict[str, Any]:
    return {"start": start, "end": end, "prot": prot, "flags": flags, "status": status}


def test_split_cuts_runs_at_vma_boundaries_and_keeps_special_vmas_with_criu() -> None:
    vmas = [vma(0x10000, 0x14000),                               # anon rw: template
            vma(0x14000, 0x16000, prot=5, status=0x41),          # r-x file private: CRIU
            vma(0x20000, 0x22000, flags=0x122),                  # stack (MAP_GROWSDOWN): CRIU
            vma(0x30000, 0x32000, flags=0x21, status=0x101),     # shared anon: CRIU
            vma(0x40000, 0x42000, status=0x49)]                  # vdso: CRIU
    runs = [images.Run(0x12000, 6 * PAGE, 0, 6), images.Run(0x20000, PAGE, 6 * PAGE, 4),
            images.Run(0x30000, PAGE, 7 * PAGE, 4), images.Run(0x40000, PAGE, 8 * PAGE, 4)]
    tmpl, rest = images.split(runs, vmas)
    assert [(r.addr, r.len, r.src, p) for r, p in tmpl] == [(0x12000, 2 * PAGE, 0, 3)]
    assert [(r.addr, r.len, r.src) for r in rest] == [(0x14000, 2 * PAGE, 2 * PAGE), (0x16000, 2 * PAGE, 4 * PAGE),
                                                      (0x20000, PAGE, 6 * PAGE), (0x30000, PAGE, 7 * PAGE),
                                                      (0x40000, PAGE, 8 * PAGE)]


def test_pinned_pages_go_back_to_criu() -> None:
    piece = images.Run(0x10000, 4 * PAGE, 100 * PAGE, 6)
    keep, back = images.unpin([(piece, 3)], {0x11000, 0x13000, 0x90000})
    assert [(r.addr, r.len, r.src) for r, _ in keep] == [(0x10000, PAGE, 100 * PAGE), (0x12000, PAGE, 102 * PAGE)]
    assert [(r.addr, r.src) for r in back] == [(0x11000, 101 * PAGE), (0x13000, 103 * PAGE)]


@pytest.fixture
def fake_pycriu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images as JSON: the split and writer logic does not depend on protobuf."""
    mod = types.SimpleNamespace(load=lambda fh, pretty=False: json.load(fh),
                                dump=lambda img, fh: fh.write(json.dumps(img).encode()))
    monkeypatch.setattr(images, "_pycriu", lambda: mod)


def _write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj))


def test_plan_and_stripped_image_set_round_trip(tmp_path: Path, fake_pycriu: None) -> None:
    d = tmp_path / "full"
    d.mkdir()
    _write(d / "pstree.img", {"magic": "PSTREE", "entries": [{"pid": 7, "threads": [7]}]})
    _write(d / "core-7.img", {"magic": "CORE", "entries": [{"thread_core": {"rseq_entry": {
        "rseq_abi_pointer": 0x13010, "rseq_abi_size": 32}}}]})
    _write(d / "mm-7.img", {"magic": "MM", "entries": [{"vmas": [vma(0x10000, 0x18000), vma(0x20000, 0x21000, flags=0x122)]}]})
    _write(d / "pagemap-7.img", {"magic": "PAGEMAP", "entries": [{"pages_id": 3},
                                                                 {"vaddr": 0x10000, "nr_pages": 5, "flags": 6},
                                                                 {"vaddr": 0x20000, "nr_pages": 1, "flags": 4}]})
    content = b"".join(bytes([i + 1]) * PAGE for i in range(6))
    (d / "pages-3.img").write_bytes(content)
    (d / "fs-7.img").write_text("other image")
    (d / "pagemap-shmem-5.img").write_text("shared memory's own pagemap")
    (d / "pages-9.img").write_text("shared memory's pages")
    plan = images.plan(d)
    # 0x10000..0x14fff dumped; the rseq page 0x13000 stays with CRIU, as does the stack page.
    assert [(a.addr, a.len, a.off) for a in plan.areas] == [(0x10000, 3 * PAGE, 0), (0x14000, PAGE, 3 * PAGE)]
    assert plan.srcs == [0, 4 * PAGE] and plan.template_bytes == 4 * PAGE
    assert [(r.addr, r.src) for r in plan.rest] == [(0x13000, 3 * PAGE), (0x20000, 5 * PAGE)]
    out = tmp_path / "stripped"
    snapshot._stripped_from(d, out, plan)
    assert (out / "fs-7.img").read_text() == "other image"
    assert (out / "fs-7.img").stat().st_ino == (d / "fs-7.img").stat().st_ino  # linked, not copied
    assert (out / "pagemap-shmem-5.img").exists() and (out / "pages-9.img").exists()  # not the task's memory
    pm = json.loads((out / "pagemap-7.img").read_text())["entries"]
    assert pm == [{"pages_id": 3}, {"vaddr": 0x13000, "nr_pages": 1, "flags": 6}, {"vaddr": 0x20000, "nr_pages": 1, "flags": 4}]
    assert (out / "pages-3.img").read_bytes() == bytes([4]) * PAGE + bytes([6]) * PAGE


def test_incremental_dumps_are_refused(tmp_path: Path, fake_pycriu: None) -> None:
    _write(tmp_path / "pagemap-1.img", {"magic": "PAGEMAP", "entries": [{"pages_id": 1},
                                                                        {"vaddr": 0x1000, "nr_pages": 1, "flags": 1}]})
    with pytest.raises(ValueError, match="incremental"):
        images.runs(tmp_path, 1)


def test_multi_process_trees_are_refused(tmp_path: Path, fake_pycriu: None) -> None:
    _write(tmp_path / "pstree.img", {"magic": "PSTREE", "entries": [{"pid": 1}, {"pid": 2}]})
    with pytest.raises(ValueError, match="single-process"):
        images.root_pid(tmp_path)


def test_smaps_and_faults_of_this_process() -> None:
    vmas = metrics.smaps(os.getpid())
    assert vmas and all(v.start < v.end for v in vmas)
    assert sum(v.fields.get("Rss", 0) for v in vmas) > 0
    assert any(v.path == "[stack]" for v in vmas)
    assert metrics.faults(os.getpid())["minflt"] > 0
    mem = metrics.instance_memory(os.getpid(), (1 << 60, (1 << 60) + 4096))
    assert mem["rss_cxl_kib"] == 0 and mem["rss_local_kib"] > 0


def test_meminfo_figures() -> None:
    n = metrics.node_memory()
    assert 0 < n["used_kib"] and 0 < n["available_kib"]


def _tar(members: dict[str, bytes], extra: tarfile.TarInfo | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra)
    return buf.getvalue()


def test_untar_takes_plain_files_only(tmp_path: Path) -> None:
    snapshot._untar(_tar({"core-1.img": b"x"}), tmp_path)
    assert (tmp_path / "core-1.img").read_bytes() == b"x"
    for bad in ("../evil", "a/b.img", ".hidden"):
        with pytest.raises(ValueError, match="unexpected member"):
            snapshot._untar(_tar({bad: b"x"}), tmp_path)
    link = tarfile.TarInfo("link.img")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(ValueError, match="unexpected member"):
        snapshot._untar(_tar({}, link), tmp_path)


def _gnu_sparse_tar(name: str, realsize: int) -> bytes:
    """A tar whose one GNU sparse ('S') member holds 512 bytes at the end of `realsize` bytes of hole."""
    info = tarfile.TarInfo(name)
    info.size = 512
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE

    def octal(n: int) -> bytes:
        return b"%011o\0" % n

    header[386:410] = octal(realsize - 512) + octal(512)  # the first sparse map entry: offset, length
    header[483:495] = octal(realsize)
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header) + b"s" * 512 + bytes(1024)


def _pax_sparse_tar(name: str, realsize: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 512
        info.pax_headers = {"GNU.sparse.map": "0,512", "GNU.sparse.realsize": str(realsize)}
        tar.addfile(info, io.BytesIO(b"s" * 512))
    return buf.getvalue()


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "core-1.img"
    return info


def test_untar_refuses_sparse_links_devices_and_missing_bytes(tmp_path: Path) -> None:
    big = 3 << 30
    for data in (_gnu_sparse_tar("pages-1.img", big), _pax_sparse_tar("pages-1.img", big)):
        assert len(data) <= 10 << 10  # a 10 KiB record block at most
        with pytest.raises(ValueError, match="sparse"):
            snapshot._untar(data, tmp_path)
    for kind in (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        with pytest.raises(ValueError, match="unexpected member"):
            snapshot._untar(_tar({"core-1.img": b"x"}, _special("other.img", kind)), _fresh(tmp_path / f"k{kind!r}"))
    # A plain member that declares more bytes than the archive holds (a truncated or forged header).
    whole = _tar({"pages-1.img": b"p" * 4096})
    header = bytearray(whole[:512])
    header[124:136] = b"%011o\0" % big
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    with pytest.raises(ValueError, match="does not hold"):
        snapshot._untar(bytes(header) + whole[512:], _fresh(tmp_path / "y"))
    with pytest.raises(ValueError, match="appears twice"):
        snapshot._untar(_tar({"a.img": b"1"}, tarfile.TarInfo("a.img")), _fresh(tmp_path / "z"))
    assert not list((tmp_path / "y").iterdir()) and [p.name for p in (tmp_path / "z").iterdir()] == ["a.img"]
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


def _fresh(d: Path) -> Path:
    d.mkdir()
    return d


def test_untar_takes_directories_with_plain_names(tmp_path: Path) -> None:
    d = tarfile.TarInfo("extra")
    d.type = tarfile.DIRTYPE
    snapshot._untar(_tar({"core-1.img": b"c"}, d), tmp_path)
    assert (tmp_path / "extra").is_dir() and (tmp_path / "core-1.img").read_bytes() == b"c"


def test_snapshot_names() -> None:
    assert snapshot.check_name("heap-256:v1") == "heap-256:v1"
    with pytest.raises(ValueError):
        snapshot.check_name("x" * 41)


def test_cli_arguments() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="verb")
    cli.register(sub)
    args = p.parse_args(["snap", "run", "heap", "--mode", "template", "--count", "3", "--event", '{"seed": 1}'])
    assert (args.mode, args.count, args.event, args.sandbox) == ("template", 3, {"seed": 1}, None)
    for bad in (["snap", "run", "heap", "--mode", "bogus"], ["snap", "run", "heap", "--mode", "criu", "--event", "[1]"],
                ["snap", "take", "x", "hello", "--env", "NOEQUALS"]):
        with pytest.raises(SystemExit) as exc:
            p.parse_args(bad)
        assert exc.value.code == 2


def test_pss_of_shared_cxl_pages() -> None:
    # Frame 1 mapped by all three instances, 2 by two, 3 by one: 4 KiB pages.
    assert metrics.pss_cxl_kib([{1, 2, 3}, {1, 2}, {1}]) == [round(4 / 3 + 2 + 4, 1), round(4 / 3 + 2, 1), round(4 / 3, 1)]
    assert metrics.pss_cxl_kib([]) == []


# --- `snap prepare` against crafted store records (the shared store is untrusted) -----------

@pytest.fixture(scope="module")
def cache_lib(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tbagent.store import cachectl

    out = tmp_path_factory.mktemp("lib") / "libcxlcache.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(out),
                    str(REPO / "guest-agent" / "native" / "cxlcache.c")], check=True)
    os.environ["CXLTB_CACHE_LIB"] = str(out)
    cachectl.LIB_PATHS = (str(out),)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_lib: None) -> Iterator[Store]:
    """A 2-head store on a plain file, opened by `snap prepare` as head 0; snapshots unpack under tmp."""
    monkeypatch.setattr("tbagent.store.core.LOCK_DIR", tmp_path / "locks")
    monkeypatch.setattr(snapshot, "SNAP_DIR", tmp_path / "snap")
    dev = tmp_path / "dev"
    with open(dev, "wb") as fh:
        fh.truncate(16 << 20)
    Store.format(str(dev), 0, nheads=2, slots=32).close()
    monkeypatch.setattr(store_cli, "open_store", lambda mhd, head=None: Store(str(dev), 0 if head is None else head))
    with Store(str(dev), 1) as writer:  # another head publishes: its records are what prepare must distrust
        yield writer


def _layout(**changes: Any) -> dict[str, Any]:
    """A layout as `snap take` writes it, for a snapshot without template areas."""
    lay = {"format": snapshot.FORMAT, "function": "hello", "env": {}, "warm": {"event": {}, "result": {"ok": 1}},
           "mhd": "mhd0", "pipes": {"in": "pipe:[1]", "out": "pipe:[2]"}, "pid": 42, "pages_id": 3, "areas": []}
    return {**lay, **changes}


def _prepare_cli(name: str) -> int:
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="verb"))
    args = p.parse_args(["snap", "prepare", name])
    return int(args.fn(args))


def test_prepare_unpacks_a_well_formed_snapshot(store: Store) -> None:
    store.publish("good", [b"", _tar({"core-42.img": b"core"}), json.dumps(_layout()).encode()])
    local = snapshot.prepare("good")
    assert local.function == "hello" and local.pipes == {"in": "pipe:[1]", "out": "pipe:[2]"}
    assert (local.stripped / "core-42.img").read_bytes() == b"core"
    assert snapshot.prepare("good").layout == local.layout  # the node's copy, read back


BAD_RECORDS: dict[str, tuple[list[bytes], str]] = {
    "no extents": ([], "0 extents"),
    "two extents": ([b"", _tar({})], "2 extents"),
    "four extents": ([b"", _tar({}), json.dumps(_layout()).encode(), b""], "4 extents"),
    "deep layout": ([b"", _tar({}), b"[" * 50_000], "nesting depth"),
    "null layout": ([b"", _tar({}), b"null"], "not an object"),
    "not JSON": ([b"", _tar({}), b"\xff\xfe"], "not UTF-8"),
    "old format": ([b"", _tar({}), json.dumps(_layout(format=0)).encode()], "layout format 0"),
    "areas not a list": ([b"", _tar({}), json.dumps(_layout(areas={"a": 1})).encode()], "areas"),
    "area beyond memory": ([bytes(PAGE), _tar({}), json.dumps(_layout(areas=[
        {"addr": 0x10000, "len": 2 * PAGE, "off": 0, "prot": 3, "flags": 6}])).encode()], "outside the 0x1000-byte"),
    "area of strings": ([bytes(PAGE), _tar({}), json.dumps(_layout(areas=[
        {"addr": "0", "len": PAGE, "off": 0, "prot": 3, "flags": 6}])).encode()], "non-negative integers"),
    "pipes missing": ([b"", _tar({}), json.dumps(_layout(pipes={})).encode()], "pipes"),
    "warm not an object": ([b"", _tar({}), json.dumps(_layout(warm=[1])).encode()], "warm.event"),
    "layout too large": ([b"", _tar({}), b" " * (snapshot.MAX_LAYOUT_BYTES + 1)], "exceeds"),
}


@pytest.mark.parametrize("blobs,why", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_prepare_turns_a_hostile_record_into_a_clean_error(store: Store, blobs: list[bytes], why: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    store.publish("evil", blobs)
    with pytest.raises(StoreError, match=why):
        snapshot.prepare("evil")
    assert _prepare_cli("evil") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tbagent snap prepare: snapshot evil: "), err
    assert not any(snapshot.SNAP_DIR.glob("evil-*"))  # nothing half-unpacked is left to be taken for a copy
