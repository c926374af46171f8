"""Snapshots in the CXL template store: take one on this node, prepare one for restores on any node.

A snapshot record in the store has three extents:
  0  memory: the template areas' pages, back to back (page aligned in the device: the mm-template
     areas point straight at them)
  1  images: a tar of the stripped CRIU image set (every image but the template's pages)
  2  layout: JSON with the areas, the dumped pipes, the function and how it was warmed

On a node, /var/lib/tbagent/snap/NAME-HEAD-SEQ/ holds `stripped/` (for template restores, with
cxltb-mmt.conf naming the node's mm-template) and, made on first use, `full/` (every page, for
criu and lazy restores: CRIU copying from local images is the baseline)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent import boundedjson
from tbagent.dax import device_path
from tbagent.sandbox import paths as sbx_paths
from tbagent.snap import images, mmt
from tbagent.snap.instance import Instance, start_cold
from tbagent.store import cli as store_cli
from tbagent.store.core import Record, StoreError

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

# In the sandbox layer store, which every sandbox sees read-only at /store: restores into
# sandboxes read the image sets from there.
SNAP_DIR = Path(os.environ.get("CXLTB_SNAP_DIR", str(sbx_paths.STORE / "snapshots")))
FORMAT = 1
MEMORY, IMAGES, LAYOUT = 0, 1, 2


@dataclass(frozen=True)
class Local:
    """A snapshot as prepared on this node."""

    name: str
    dir: Path
    layout: JsonObject
    mmt_name: str
    mem_off: int   # where the template's pages start in the device

    @property
    def stripped(self) -> Path:
        return self.dir / "stripped"

    @property
    def full(self) -> Path:
        return self.dir / "full"

    @property
    def pipes(self) -> dict[str, str]:
        return dict(self.layout["pipes"])

    @property
    def function(self) -> str:
        return str(self.layout["function"])


def check_name(name: str) -> str:
    mmt.check_name(name)
    if len(name) > 40:
        raise ValueError(f"snapshot name {name!r} is longer than 40 characters")
    return name


def mmt_name(rec: Record) -> str:
    return f"{rec.name}:{rec.head}:{rec.seq}"


def _key(rec: Record) -> str:
    return f"{rec.name}-{rec.head}-{rec.seq}"


def _pipe_keys(pid: int) -> dict[str, str]:
    return {"in": os.readlink(f"/proc/{pid}/fd/0"), "out": os.readlink(f"/proc/{pid}/fd/1")}


def _tar(d: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(d.iterdir()):
            if f.name not in images.SKIP_FILES:
                tar.add(f, arcname=f.name)
    return buf.getvalue()


# Bounds an image set even when the archive itself is larger (the rest of the node's disk).
UNTAR_MAX_BYTES = 16 << 30
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)


def _untar(data: bytes, out: Path) -> None:
    """Unpack an image-set tar into the empty directory `out`: regular files and directories
    with plain names only (bookworm's Python 3.11.2 has no extraction filters, and the store is
    shared with other hosts, any of which may have written the tar).

    Sparse members are refused (a few KiB can declare gigabytes of holes), and so are links,
    devices and FIFOs; every member's bytes must be in the archive itself, so the total written
    is bounded by the archive's size."""
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # no decompression: no bombs
            for m in tar:  # one member at a time: the first bad one stops everything
                _check_member(m, len(data))
                total += m.size
                if total > min(len(data), UNTAR_MAX_BYTES):
                    raise ValueError(f"snapshot image set: members total more than {min(len(data), UNTAR_MAX_BYTES)} bytes")
                if m.isdir():
                    (out / m.name).mkdir(mode=0o755)
                    continue
                src = tar.extractfile(m)
                assert src is not None  # a regular member always has a file object
                fd = os.open(out / m.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
    except FileExistsError as exc:
        raise ValueError(f"snapshot image set: member {Path(str(exc.filename)).name!r} appears twice") from None
    except tarfile.TarError as exc:
        raise ValueError(f"snapshot image set: not a valid tar: {exc}") from None


def _check_member(m: tarfile.TarInfo, archive_bytes: int) -> None:
    if m.type not in _PLAIN_TYPES or m.sparse is not None:
        kind = "sparse file" if m.sparse is not None or m.type == tarfile.GNUTYPE_SPARSE else f"type {m.type!r}"
        raise ValueError(f"snapshot image set: unexpected member {m.name!r} ({kind})")
    if not m.name or "/" in m.name or "\0" in m.name or m.name.startswith("."):
        raise ValueError(f"snapshot image set: unexpected member {m.name!r}")
    if m.isdir():
        return
    if not 0 <= m.size <= archive_bytes - m.offset_data:
        raise ValueError(f"snapshot image set: member {m.name!r} declares {m.size} bytes the archive does not hold")


def _stripped_from(full: Path, out: Path, plan: images.Plan) -> None:
    images.link_other_images(full, out, plan.pid, plan.pages_id)
    with images.Pages(full, plan.pages_id) as pages:
        images.write_memory(out, plan.pid, plan.pages_id,
                            [(r.addr, r.len, r.flags, pages.view[r.src : r.src + r.len]) for r in plan.rest])


def take(name: str, function: str, mhd: str = "mhd0", warm: JsonObject | None = None,
         env: dict[str, str] | None = None) -> JsonObject:
    """Start `function` cold, warm it (initialisation + a first request), checkpoint it with CRIU
    and publish it as a template in the store of `mhd`."""
    check_name(name)
    with store_cli.open_store(mhd) as st:
        if any(r.name == name for r in st.templates()):  # before the work, not at publish time
            raise StoreError(f"a template named {name!r} already exists")
    warm = warm if warm is not None else {}
    tmp = SNAP_DIR / f".take-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "full").mkdir(parents=True)
    try:
        marks: dict[str, float] = {}
        inst: Instance = start_cold(function, env)
        try:
            reply, marks["warm_s"] = inst.invoke(warm)
            if not reply.get("ok"):
                raise RuntimeError(f"{function}: the warm-up request failed: {reply.get('error')}")
            pipes = _pipe_keys(inst.pid)
            t0 = time.monotonic()
            res = subprocess.run(["criu", "dump", "-t", str(inst.pid), "-D", str(tmp / "full"), "-o", "dump.log", "-v2"],
                                 stdin=subprocess.DEVNULL, capture_output=True)
            marks["dump_s"] = time.monotonic() - t0
            if res.returncode != 0:
                log = (tmp / "full" / "dump.log").read_text(errors="replace").splitlines()
                raise RuntimeError("criu dump failed: " + " | ".join([ln for ln in log if "Error" in ln][-3:] or log[-3:]))
        finally:
            inst.stop()
        plan = images.plan(tmp / "full")
        _stripped_from(tmp / "full", tmp / "stripped", plan)
        layout = {"format": FORMAT, "function": function, "env": env or {}, "warm": {"event": warm, "result": reply["result"]},
                  "mhd": mhd, "pipes": pipes, "pid": plan.pid, "pages_id": plan.pages_id,
                  "areas": [a.to_json() for a in plan.areas]}
        t0 = time.monotonic()
        with images.Pages(tmp / "full", plan.pages_id) as pages, store_cli.open_store(mhd) as st:
            memory = [pages.view[s : s + a.len] for a, s in zip(plan.areas, plan.srcs, strict=True)]
            rec = st.publish(name, [memory, _tar(tmp / "stripped"), json.dumps(layout).encode()],
                             {"kind": "snapshot", "format": FORMAT, "function": function,
                              "template_bytes": plan.template_bytes, "areas": len(plan.areas),
                              "criu_bytes": sum(r.len for r in plan.rest)})
            del memory
        marks["publish_s"] = time.monotonic() - t0
        final = SNAP_DIR / _key(rec)
        shutil.rmtree(final, ignore_errors=True)
        (tmp / "full" / ".complete").write_text("ok\n")
        _write_local(tmp, rec, layout)
        tmp.rename(final)
        local = _register(rec, final, layout)
        return {"name": name, "head": rec.head, "seq": rec.seq, "function": function, "mmt": local.mmt_name,
                "areas": len(plan.areas), "template_bytes": plan.template_bytes,
                "criu_bytes": sum(r.len for r in plan.rest), "timings": marks, "warm_result": reply["result"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_local(d: Path, rec: Record, layout: JsonObject) -> None:
    """The files that make a node's copy complete (written before it is renamed into place):
    the plugin's request in the stripped image set, and the layout (its presence = unpacked)."""
    conf = f"template {mmt_name(rec)}\n" if layout["areas"] else "# no template areas\n"
    (d / "stripped" / "cxltb-mmt.conf").write_text(conf)
    (d / "layout.json").write_text(json.dumps(layout))


def _register(rec: Record, d: Path, layout: JsonObject) -> Local:
    """Register the mm-template on this node unless it is (kernel state: gone after a reboot)."""
    base = rec.extents[MEMORY]["off"]
    areas = [mmt.Area(a["addr"], a["len"], a["off"], a["prot"]).at(base) for a in layout["areas"]]
    name = mmt_name(rec)
    if areas:
        mmt.ensure(name, os.path.realpath(device_path(str(layout.get("mhd", "mhd0")))), areas)
    return Local(rec.name, d, layout, name, base)


# Bounds of a layout extent: another head wrote it (the store is shared and untrusted), and a
# real one is a few KiB (one entry per template area, plus the warm-up event and its result).
MAX_LAYOUT_BYTES = 1 << 20
MAX_LAYOUT_DEPTH = 32
MAX_AREAS = 1 << 16
AREA_KEYS = ("addr", "len", "off", "prot", "flags")


def _extents(rec: Record) -> list[dict[str, int]]:
    """The record's extents, which must be exactly memory, images and layout."""
    extents = rec.extents
    if len(extents) != 3:
        raise StoreError(f"snapshot {rec.name}: the record has {len(extents)} extents, a snapshot has 3 "
                         "(memory, images, layout)")
    if extents[LAYOUT]["len"] > MAX_LAYOUT_BYTES:
        raise StoreError(f"snapshot {rec.name}: layout extent of {extents[LAYOUT]['len']} bytes exceeds {MAX_LAYOUT_BYTES}")
    return extents


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _strmap(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _check_area(a: object, memory_len: int) -> None:
    if not isinstance(a, dict) or not all(_uint(a.get(k)) for k in AREA_KEYS):
        raise ValueError(f"an area is not an object of non-negative integers {', '.join(AREA_KEYS)}: {a!r:.120}")
    if a["off"] % images.PAGE or a["addr"] % images.PAGE or a["len"] % images.PAGE or a["len"] == 0:
        raise ValueError(f"area {a!r:.120} is not page aligned")
    if a["off"] + a["len"] > memory_len:
        raise ValueError(f"area at off={a['off']:#x} len={a['len']:#x} lies outside the {memory_len:#x}-byte memory extent")


def _check_layout(layout: object, memory_len: int) -> JsonObject:
    """The fields prepare, register and the restore modes read, with the types they assume."""
    if not isinstance(layout, dict):
        raise ValueError(f"the layout is a JSON {type(layout).__name__}, not an object")
    if layout.get("format") != FORMAT:
        raise ValueError(f"layout format {layout.get('format')!r:.40}, this agent reads {FORMAT}")
    warm, pipes, areas = layout.get("warm"), layout.get("pipes"), layout.get("areas")
    if not isinstance(layout.get("function"), str) or not isinstance(layout.get("mhd", "mhd0"), str):
        raise ValueError("the layout's function or mhd is not a string")
    if not _strmap(layout.get("env", {})) or not _strmap(pipes) or not {"in", "out"} <= set(pipes or {}):
        raise ValueError("the layout's env or pipes (in, out) are not objects of strings")
    if not isinstance(warm, dict) or not isinstance(warm.get("event"), dict):
        raise ValueError("the layout's warm.event is not an object")
    if not _uint(layout.get("pid")) or not _uint(layout.get("pages_id")):
        raise ValueError("the layout's pid or pages_id is not a non-negative integer")
    if not isinstance(areas, list) or len(areas) > MAX_AREAS:
        raise ValueError(f"the layout's areas are not a list of at most {MAX_AREAS}")
    for a in areas:
        _check_area(a, memory_len)
    return layout


def _layout(rec: Record, text: bytes | str, memory_len: int) -> JsonObject:
    """Decode and check a snapshot's layout; a bad one is a StoreError (exit 2), not a traceback."""
    try:
        return _check_layout(boundedjson.loads(text, MAX_LAYOUT_BYTES, MAX_LAYOUT_DEPTH), memory_len)
    except ValueError as exc:
        raise StoreError(f"snapshot {rec.name}: bad layout: {exc}") from None


def prepare(name: str, mhd: str = "mhd0", full: bool = False) -> Local:
    """This node's copy of snapshot `name`: image set unpacked, mm-template registered; with
    `full`, also the full image set (pages read from the store once and kept on local disk)."""
    check_name(name)  # it becomes part of a path under SNAP_DIR
    with store_cli.open_store(mhd) as st:
        rec = st.find(name)
        extents = _extents(rec)
        d = SNAP_DIR / _key(rec)
        if (d / "layout.json").exists():
            layout = _layout(rec, (d / "layout.json").read_bytes(), extents[MEMORY]["len"])
        else:
            layout = _layout(rec, st.read_extent(extents[LAYOUT]), extents[MEMORY]["len"])
            tmp = SNAP_DIR / f".prep-{_key(rec)}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "stripped").mkdir(parents=True)
            _untar(st.read_extent(extents[IMAGES]), tmp / "stripped")
            _write_local(tmp, rec, layout)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(d)
            tmp.rename(d)
        local = _register(rec, d, layout)
        if full and not (local.full / ".complete").exists():
            _full_from_store(st.read_extent(extents[MEMORY]) if layout["areas"] else b"", local)
    return local


def _full_from_store(memory: bytes, local: Local) -> None:
    lay = local.layout
    out = local.full
    shutil.rmtree(out, ignore_errors=True)
    pid, pages_id = int(lay["pid"]), int(lay["pages_id"])
    images.link_other_images(local.stripped, out, pid, pages_id)
    _, rest = images.runs(local.stripped, pid)
    view = memoryview(memory)
    with images.Pages(local.stripped, pages_id) as pages:
        pieces: list[tuple[int, int, int, bytes | memoryview]] = [
            (r.addr, r.len, r.flags, pages.view[r.src : r.src + r.len]) for r in rest]
        pieces += [(a["addr"], a["len"], a["flags"], view[a["off"] : a["off"] + a["len"]]) for a in lay["areas"]]
        images.write_memory(out, pid, pages_id, pieces)
        del pieces  # the views must go before the mapping under them is closed
    view.release()
    (out / ".complete").write_text("ok\n")
