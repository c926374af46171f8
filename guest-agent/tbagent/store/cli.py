"""`tbagent store ...`: format, put, get, list, delete, check, gc on an MHD's template store."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent import info
from tbagent.dax import device_path
from tbagent.errors import command
from tbagent.store.core import Store, StoreError

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

    from tbagent.commands import Subcommands


def head_of(mhd: str) -> tuple[int, int]:
    """(this node's head index, number of heads) of an MHD, from the boot-time CXL set-up."""
    for dev in info.info()["cxl"]:
        if dev.get("mhd") == mhd or dev.get("path") == mhd or dev.get("dax") == mhd:
            return int(dev["head"]), int(dev["heads"])
    raise StoreError(f"this node is not a head of MHD {mhd!r}")


def open_store(mhd: str, head: int | None = None) -> Store:
    h = head if head is not None else head_of(mhd)[0]
    return Store(device_path(mhd), h)


def op_format(mhd: str, slots: int = 256, heads: int | None = None, head: int | None = None) -> JsonObject:
    my_head, nheads = head_of(mhd) if head is None or heads is None else (head, heads)
    with Store.format(device_path(mhd), my_head, nheads, slots) as st:
        sb = st.sb
        return {"heads": sb.nheads, "slots": sb.slots, "section_size": sb.section_size, "data_off": sb.data_off}


def out_names(files: Json, count: int) -> list[str]:
    """The names `get --out` gives a record's extents: its meta's plain file names (another
    head wrote them, so nothing that could leave the output directory), then extentN."""
    if not isinstance(files, list):
        raise StoreError("the record's meta.files is not a list of file names")
    names = [_plain_name(files[i]) if i < len(files) else f"extent{i}" for i in range(count)]
    if len(set(names)) != len(names):
        raise StoreError(f"the record names one output file twice: {names!r:.200}")
    return names


def _plain_name(name: object) -> str:
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise StoreError(f"refusing output file name {name!r:.80}: a plain file name is expected")
    return name


def _write_into(dirfd: int, name: str, data: bytes) -> None:
    """Write `name` in the directory `dirfd` by creating a fresh file and renaming it over the
    name: the rename replaces a symlink or hard link already there instead of writing through it."""
    tmp = f".tbagent-get-{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        os.unlink(tmp, dir_fd=dirfd)
        raise


def op_put(mhd: str, name: str, files: list[str], meta: JsonObject | None = None) -> JsonObject:
    if meta is not None and not isinstance(meta, dict):
        raise StoreError("--meta must be a JSON object")
    meta = {"files": [Path(f).name for f in files], **(meta or {})}
    out_names(meta["files"], len(files))  # refused here already, so no reader has to
    blobs = [Path(f).read_bytes() for f in files]
    with open_store(mhd) as st:
        rec = st.publish(name, blobs, meta)
        return {"name": rec.name, "head": rec.head, "seq": rec.seq, "extents": rec.extents}


def op_list(mhd: str) -> list[JsonObject]:
    with open_store(mhd) as st:
        return [{"name": r.name, "head": r.head, "seq": r.seq, "bytes": sum(e["len"] for e in r.extents),
                 "extents": r.extents, "meta": r.payload.get("meta", {})} for r in st.templates()]


def op_get(mhd: str, name: str, out: str | None = None) -> JsonObject:
    with open_store(mhd) as st:
        rec = st.find(name)
        names = out_names(rec.payload["meta"].get("files", []), len(rec.extents)) if out else []
        datas = [st.read_extent(e) for e in rec.extents]
    if out:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            dirfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for fname, data in zip(names, datas, strict=True):
                    _write_into(dirfd, fname, data)
            finally:
                os.close(dirfd)
        except OSError as exc:
            raise StoreError(f"writing {name} into {out}: {exc}") from None
    return {"name": name, "head": rec.head, "seq": rec.seq, "extents": rec.extents,
            "crc_ok": True, "bytes": sum(len(d) for d in datas)}


def op_delete(mhd: str, name: str) -> JsonObject:
    with open_store(mhd) as st:
        rec = st.delete(name)
        return {"deleted": name, "record_seq": rec.seq}


def op_check(mhd: str) -> JsonObject:
    with open_store(mhd) as st:
        return st.check()


def op_gc(mhd: str) -> JsonObject:
    with open_store(mhd) as st:
        return st.gc()


def _print(obj: Json) -> None:
    print(json.dumps(obj, indent=None, separators=(",", ":")))


@command("store")
def _run(args: argparse.Namespace) -> int:
    if args.op == "format":
        _print(op_format(args.mhd, args.slots))
    elif args.op == "put":
        _print(op_put(args.mhd, args.name, args.files, json.loads(args.meta) if args.meta else None))
    elif args.op == "list":
        _print(op_list(args.mhd))
    elif args.op == "get":
        _print(op_get(args.mhd, args.name, args.out))
    elif args.op == "delete":
        _print(op_delete(args.mhd, args.name))
    elif args.op == "gc":
        _print(op_gc(args.mhd))
    elif args.op == "check":
        report = op_check(args.mhd)
        _print(report)
        return 0 if report["ok"] else 1
    return 0


def register(sub: Subcommands) -> None:
    st = sub.add_parser("store", help="the template store in an MHD's shared CXL memory")
    ops = st.add_subparsers(dest="op", required=True)
    f = ops.add_parser("format", help="create an empty store (one node does this once)")
    f.add_argument("mhd")
    f.add_argument("--slots", type=int, default=256, help="manifest records per head")
    p = ops.add_parser("put", help="publish a template from files (one page-aligned extent each)")
    p.add_argument("mhd")
    p.add_argument("name")
    p.add_argument("files", nargs="+")
    p.add_argument("--meta", help="JSON object stored with the record")
    g = ops.add_parser("get", help="read a template back, verifying checksums")
    g.add_argument("mhd")
    g.add_argument("name")
    g.add_argument("--out", help="write the extents as files into this directory")
    for op, text in (("list", "live templates"), ("check", "verify the store; exit 1 on problems"),
                     ("gc", "reclaim this head's deleted templates and abandoned slots")):
        ops.add_parser(op, help=text).add_argument("mhd")
    d = ops.add_parser("delete", help="delete a template (space is reclaimed by its owner's gc)")
    d.add_argument("mhd")
    d.add_argument("name")
    st.set_defaults(fn=_run)
