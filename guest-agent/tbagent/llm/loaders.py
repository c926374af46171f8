"""The three ways an inference instance gets its weights, each a mode of the workload:

- disk: the usual baseline: a safetensors file on the node's local disk read into local memory,
  with the page cache dropped first so the read really comes from the disk;
- cxl-copy: ServerlessLLM's multi-tier load: a chunked copy out of the MHD into one local
  buffer, pipelined: a reader thread copies chunk i+1 while chunk i's crc32 is checked;
- cxl-map: the tensors are views straight onto the MHD mapping: nothing is copied, and the cost
  of touching the pages falls to the first token."""

from __future__ import annotations

import os
import queue
import threading
import time
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tbagent.llm import checkpoint, modelstore, safetensors
from tbagent.llm.checkpoint import CheckpointError, Index
from tbagent.llm.modelstore import MappedModel
from tbagent.store import Store

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

CHUNK = 16 << 20  # ServerlessLLM copies in chunks of this order; small enough to overlap well
DISK_DIR = Path(os.environ.get("CXLTB_MODEL_DIR", "/var/lib/cxltb/models"))


class Loader(StrEnum):
    DISK = "disk"
    CXL_COPY = "cxl-copy"
    CXL_MAP = "cxl-map"


class Drop(StrEnum):
    """What the disk loader drops from the page cache before reading."""

    ALL = "all"  # /proc/sys/vm/drop_caches (root): the baseline
    FILE = "file"  # only the checkpoint file's pages (fadvise): no root, spares a shared machine
    NONE = "none"


class CacheDrop(StrEnum):
    """What was dropped, recorded with the load."""

    DROPPED_ALL = "dropped-all"
    DROPPED_FILE = "dropped-file"
    NOT_PERMITTED = "not-permitted"  # not root: only the file's pages were dropped
    SKIPPED = "skipped"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class LoadStats:
    loader: Loader
    seconds: float
    bytes_copied: int
    bytes_mapped: int
    verified: bool  # every tensor's crc32 checked during the load
    page_cache: CacheDrop = CacheDrop.NOT_APPLICABLE
    detail: dict[str, float] = field(default_factory=dict)  # phases, in seconds

    def to_json(self) -> JsonObject:
        return {"loader": str(self.loader), "seconds": self.seconds, "bytes_copied": self.bytes_copied,
                "bytes_mapped": self.bytes_mapped, "verified": self.verified, "page_cache": str(self.page_cache),
                "detail": dict(self.detail)}


@dataclass
class Weights:
    """A loaded model: its config and tensors; for cxl-map, the mapping they are views of."""

    config: JsonObject
    tensors: dict[str, np.ndarray]
    mapping: MappedModel | None = None

    def close(self) -> None:
        self.tensors = {}
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None


def disk_path(name: str, directory: Path | None = None) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"model name {name!r:.80} is not a plain file name")
    return (directory or DISK_DIR) / f"{name}.safetensors"


def drop_page_cache(path: str, drop: Drop) -> CacheDrop:
    if drop is Drop.NONE:
        return CacheDrop.SKIPPED
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)  # dirty pages are not dropped: write them back first
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if drop is Drop.FILE:
        return CacheDrop.DROPPED_FILE
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1")
    except PermissionError:
        return CacheDrop.NOT_PERMITTED
    return CacheDrop.DROPPED_ALL


def load_disk(path: str, drop: Drop = Drop.ALL) -> tuple[Weights, LoadStats]:
    dropped = drop_page_cache(path, drop)
    t0 = time.perf_counter()
    config, tensors, nread = safetensors.read(path)
    return Weights(config, tensors), LoadStats(Loader.DISK, time.perf_counter() - t0, nread, 0, False, dropped)


def _pieces(index: Index, chunk: int) -> list[tuple[int, int, int]]:
    """(tensor number, start, end) pieces of at most `chunk` bytes, in checkpoint order."""
    out = []
    for i, e in enumerate(index.tensors):
        for a in range(e.offset, e.offset + e.length, chunk):
            out.append((i, a, min(a + chunk, e.offset + e.length)))
    return out


def copy_piece(local: np.ndarray, source: np.ndarray, a: int, b: int) -> None:
    local[a:b] = source[a:b]


def copy_verified(src: memoryview, index: Index, chunk: int = CHUNK, pipeline: bool = True) -> np.ndarray:
    """A local copy of the checkpoint's tensor data (same layout as `src`, so the index's
    offsets hold), every tensor's crc32 checked. With `pipeline`, a reader thread copies ahead
    while this thread checks what has arrived (numpy's copy and zlib's crc32 release the GIL)."""
    if chunk < checkpoint.PAGE or chunk % checkpoint.PAGE:
        raise ValueError(f"chunk of {chunk} bytes is not a positive multiple of {checkpoint.PAGE}")
    source = np.frombuffer(src, np.uint8)
    local = np.empty(len(source), np.uint8)
    crcs = [0] * len(index.tensors)
    pieces = _pieces(index, chunk)

    def check(i: int, a: int, b: int) -> None:
        crcs[i] = zlib.crc32(local[a:b].data, crcs[i])

    if not pipeline:
        for i, a, b in pieces:
            copy_piece(local, source, a, b)
            check(i, a, b)
    else:
        done: queue.Queue[tuple[int, int, int] | None] = queue.Queue()  # unbounded: the reader never blocks
        failed: list[BaseException] = []
        stop = threading.Event()

        def reader() -> None:
            try:
                for i, a, b in pieces:
                    if stop.is_set():
                        return
                    copy_piece(local, source, a, b)
                    done.put((i, a, b))
            except BaseException as exc:  # handed to the caller below, never lost
                failed.append(exc)
            finally:
                done.put(None)

        thread = threading.Thread(target=reader, name="cxl-copy-reader", daemon=True)
        thread.start()
        try:
            while (piece := done.get()) is not None:
                check(*piece)
        finally:
            stop.set()
            thread.join()
        if failed:
            raise failed[0]
    bad = [e.name for e, crc in zip(index.tensors, crcs, strict=True) if crc != e.crc32]
    if bad:
        raise CheckpointError(f"{len(bad)} tensor(s) fail their crc32 while copied from CXL: {', '.join(bad[:5])}")
    return local


def load_cxl(loader: Loader, device: str, head: int, name: str, chunk: int = CHUNK,
             pipeline: bool = True) -> tuple[Weights, LoadStats]:
    t0 = time.perf_counter()
    with Store(device, head) as st:
        t_find = time.perf_counter()
        mapped = modelstore.open_model(st, name)
        t_open = time.perf_counter()
    # The store's own read-write mapping of the whole device is gone now: what stays mapped is
    # the model's read-only window only.
    detail = {"find_s": t_find - t0, "invalidate_and_parse_s": t_open - t_find}
    if loader is Loader.CXL_MAP:
        data = mapped.index.data_bytes
        stats = LoadStats(loader, time.perf_counter() - t0, 0, data, False, detail=detail)
        return Weights(mapped.config, mapped.tensors, mapped), stats
    try:
        local = copy_verified(mapped.buf, mapped.index, chunk, pipeline)
        index = mapped.index
    finally:
        mapped.close()
    detail["copy_s"] = time.perf_counter() - t_open
    tensors = checkpoint.views(local.data, index)
    stats = LoadStats(loader, time.perf_counter() - t0, index.data_bytes, 0, True, detail=detail)
    return Weights(index.config, tensors), stats


def load(loader: Loader, name: str, *, device: str | None = None, head: int = 0, disk: str | None = None,
         drop: Drop = Drop.ALL, chunk: int = CHUNK, pipeline: bool = True) -> tuple[Weights, LoadStats]:
    """Load model `name` with `loader`: from the store on `device` (this node's `head`) for the
    cxl loaders, from the safetensors file `disk` (default DISK_DIR/NAME.safetensors) for disk."""
    if loader is Loader.DISK:
        return load_disk(disk or str(disk_path(name)), drop)
    if device is None:
        raise ValueError(f"loader {loader} needs the MHD device")
    return load_cxl(loader, device, head, name, chunk, pipeline)
