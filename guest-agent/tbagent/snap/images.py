"""A CRIU image set's memory: which dumped pages become template areas, and the two image
sets made from one dump (`full`: every page in pages-N.img; `stripped`: the template's pages
left out, restored by mm-template instead).

Images are read and written with Debian's pycriu (shipped with criu). A template area is a run
of dumped pages inside one private, non-executable, non-stack VMA of the root task; everything
else (stack, vdso, executable CoW pages, shared memory) stays with CRIU."""

from __future__ import annotations

import importlib
import mmap
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent.snap.mmt import Area

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

PAGE = 4096
PE_PARENT = 1
PE_PRESENT = 4
# CRIU's vma status bits (criu/include/image.h) that keep a VMA's pages out of templates.
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_SPECIAL = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13)
MAP_SHARED = 0x01
MAP_GROWSDOWN = 0x100
PROT_EXEC = 0x4
PROT_RW = 0x3


def _pycriu() -> types.ModuleType:
    return importlib.import_module("pycriu.images")


def load(path: Path) -> JsonObject:
    with open(path, "rb") as fh:
        img: JsonObject = _pycriu().load(fh, pretty=False)
    return img


def save(img: JsonObject, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        _pycriu().dump(img, fh)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Run:
    """Dumped pages at [addr, addr + len) that are `src` bytes into pages-N.img."""

    addr: int
    len: int
    src: int
    flags: int


def root_pid(imgdir: Path) -> int:
    entries = load(imgdir / "pstree.img")["entries"]
    if len(entries) != 1:
        raise ValueError(f"{imgdir}: a template needs a single-process tree, this one has {len(entries)}")
    return int(entries[0]["pid"])


def runs(imgdir: Path, pid: int) -> tuple[int, list[Run]]:
    """(pages_id, the dumped page runs of task `pid` in pagemap order)."""
    pm = load(imgdir / f"pagemap-{pid}.img")["entries"]
    out, src = [], 0
    for e in pm[1:]:
        n = int(e["nr_pages"]) * PAGE
        flags = int(e.get("flags", PE_PRESENT))
        if flags & PE_PARENT:
            raise ValueError(f"{imgdir}: incremental dumps (pages in a parent image) are not supported")
        out.append(Run(int(e["vaddr"]), n, src, flags))
        src += n
    return int(pm[0]["pages_id"]), out


def vmas(imgdir: Path, pid: int) -> list[JsonObject]:
    return list(load(imgdir / f"mm-{pid}.img")["entries"][0]["vmas"])


def eligible(vma: JsonObject) -> bool:
    status, flags, prot = int(vma["status"]), int(vma["flags"]), int(vma["prot"])
    return (bool(status & VMA_AREA_REGULAR) and not status & VMA_SPECIAL and not flags & (MAP_SHARED | MAP_GROWSDOWN)
            and not prot & PROT_EXEC and bool(prot & 1))


def split(page_runs: list[Run], vma_list: list[JsonObject]) -> tuple[list[tuple[Run, int]], list[Run]]:
    """Cut runs at VMA boundaries; return ([(piece, prot)] that go to the template, [rest])."""
    bounds = sorted((int(v["start"]), int(v["end"]), v) for v in vma_list)
    tmpl: list[tuple[Run, int]] = []
    rest: list[Run] = []
    for r in page_runs:
        pos = r.addr
        while pos < r.addr + r.len:
            vma = next((v for s, e, v in bounds if s <= pos < e), None)
            end = min(r.addr + r.len, int(vma["end"])) if vma else r.addr + r.len
            piece = Run(pos, end - pos, r.src + (pos - r.addr), r.flags)
            if vma is not None and eligible(vma):
                tmpl.append((piece, int(vma["prot"])))
            else:
                rest.append(piece)
            pos = end
    return tmpl, rest


@dataclass(frozen=True)
class Plan:
    pid: int
    pages_id: int
    areas: list[Area]
    srcs: list[int]   # per area: where its bytes are in the dump's pages-N.img
    rest: list[Run]   # the pages CRIU keeps

    @property
    def template_bytes(self) -> int:
        return sum(a.len for a in self.areas)


def pinned_pages(imgdir: Path, pid: int) -> set[int]:
    """Pages that must stay where CRIU puts them: each thread's rseq area. The kernel reads it on
    every return to user space, so it may not be unmapped even for the instant between the
    plugin's munmap and its attach (that gets the task a SIGSEGV)."""
    tids = load(imgdir / "pstree.img")["entries"][0].get("threads", [pid])
    pages: set[int] = set()
    for tid in tids:
        rseq = load(imgdir / f"core-{tid}.img")["entries"][0].get("thread_core", {}).get("rseq_entry")
        if rseq and rseq.get("rseq_abi_pointer"):
            start, size = int(rseq["rseq_abi_pointer"]), int(rseq.get("rseq_abi_size", 32))
            pages.update(range(start - start % PAGE, start + size, PAGE))
    return pages


def unpin(tmpl: list[tuple[Run, int]], pinned: set[int]) -> tuple[list[tuple[Run, int]], list[Run]]:
    """Cut pinned pages out of the template pieces; they go back to CRIU."""
    keep: list[tuple[Run, int]] = []
    back: list[Run] = []
    for piece, prot in tmpl:
        pos = piece.addr
        for page in sorted(p for p in pinned if piece.addr <= p < piece.addr + piece.len):
            if page > pos:
                keep.append((Run(pos, page - pos, piece.src + pos - piece.addr, piece.flags), prot))
            back.append(Run(page, PAGE, piece.src + page - piece.addr, piece.flags))
            pos = page + PAGE
        if pos < piece.addr + piece.len:
            keep.append((Run(pos, piece.addr + piece.len - pos, piece.src + pos - piece.addr, piece.flags), prot))
    return keep, back


def plan(imgdir: Path) -> Plan:
    pid = root_pid(imgdir)
    pages_id, page_runs = runs(imgdir, pid)
    tmpl, rest = split(page_runs, vmas(imgdir, pid))
    tmpl, back = unpin(tmpl, pinned_pages(imgdir, pid))
    rest = sorted(rest + back, key=lambda r: r.addr)
    areas, srcs, off = [], [], 0
    for piece, prot in tmpl:
        areas.append(Area(piece.addr, piece.len, off, prot, piece.flags))
        srcs.append(piece.src)
        off += piece.len
    return Plan(pid, pages_id, areas, srcs, rest)


class Pages:
    """pages-N.img of an image set, mapped read-only: slices without copies."""

    def __init__(self, imgdir: Path, pages_id: int) -> None:
        self._fh = open(imgdir / f"pages-{pages_id}.img", "rb")
        size = os.fstat(self._fh.fileno()).st_size
        self._map = mmap.mmap(self._fh.fileno(), size, prot=mmap.PROT_READ) if size else None
        self.view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def close(self) -> None:
        self.view.release()
        if self._map is not None:
            self._map.close()
        self._fh.close()

    def __enter__(self) -> Pages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SKIP_FILES = ("dump.log", "restore.log", "stats-dump", "stats-restore", "cxltb-mmt.conf")


def link_other_images(src: Path, dst: Path, pid: int, pages_id: int) -> None:
    """Hard-link every image of `src` into `dst` but the root task's memory (and logs); shared
    memory keeps its own pagemap-shmem/pages images."""
    dst.mkdir(parents=True, exist_ok=True)
    skip = {*SKIP_FILES, f"pagemap-{pid}.img", f"pages-{pages_id}.img"}
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            target = dst / f.name
            if not target.exists():
                os.link(f, target)


def write_memory(out: Path, pid: int, pages_id: int, pieces: list[tuple[int, int, int, bytes | memoryview]]) -> None:
    """pagemap-PID.img and pages-ID.img in `out` from (addr, len, pagemap flags, data) pieces."""
    entries: list[JsonObject] = [{"pages_id": pages_id}]
    tmp = out / f"pages-{pages_id}.img.tmp"
    with open(tmp, "wb") as fh:
        for addr, length, flags, data in sorted(pieces, key=lambda x: x[0]):
            entries.append({"vaddr": addr, "nr_pages": length // PAGE, "flags": flags})
            fh.write(data)
    os.replace(tmp, out / f"pages-{pages_id}.img")
    save({"magic": "PAGEMAP", "entries": entries}, out / f"pagemap-{pid}.img")
