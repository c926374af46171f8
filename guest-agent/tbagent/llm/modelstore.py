"""Model checkpoints in the MHD's template store: "persist once, load many".

A model is one template record whose one extent is a checkpoint (tbagent.llm.checkpoint). It is
named PREFIX + the model's name, and its meta says {"kind": "model", ...}, so `store list`
shows it as `model/NAME` and `model list` shows only models. Publishing reuses the store's
allocation and torn-write-safe publish protocol; a name is published once (the store refuses a
second record of the same name).

Opening a model maps the record's extent read-only (MAP_SHARED, as device-dax requires, over a
2 MiB-aligned window) and parses the checkpoint from the mapping: the tensors are views onto
the CXL memory itself."""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tbagent.llm import checkpoint
from tbagent.llm.checkpoint import CheckpointError, Index
from tbagent.store import Record, Store, StoreError

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

PREFIX = "model/"
KIND = "model"
FORMAT = "tbckpt"
ALIGN = 2 << 20  # device-dax maps whole 2 MiB units


def record_name(name: str) -> str:
    if not name or name.startswith(PREFIX):
        raise StoreError(f"model name {name!r:.80} must be non-empty and given without the {PREFIX!r} prefix")
    return PREFIX + name


def is_model(rec: Record) -> bool:
    meta = rec.payload.get("meta", {})
    return rec.name.startswith(PREFIX) and isinstance(meta, dict) and meta.get("kind") == KIND


def put(store: Store, name: str, config: JsonObject, tensors: Mapping[str, np.ndarray]) -> Record:
    """Publish a model's checkpoint, written chunk by chunk (the tensors are not copied first)."""
    chunks = checkpoint.pack(config, tensors)
    size = sum(len(c) for c in chunks)
    meta: JsonObject = {"kind": KIND, "format": FORMAT, "version": checkpoint.VERSION, "config": config,
                        "tensors": len(tensors), "params": int(sum(int(t.size) for t in tensors.values())),
                        "bytes": size}
    return store.publish(record_name(name), [chunks], meta)


def models(store: Store) -> list[Record]:
    return [r for r in store.templates() if is_model(r)]


def find(store: Store, name: str) -> Record:
    for r in models(store):
        if r.name == PREFIX + name:
            return r
    raise StoreError(f"no model named {name!r} in the store (see `tbagent model list`)")


def summary(rec: Record) -> JsonObject:
    meta = rec.payload["meta"]
    return {"name": rec.name[len(PREFIX):], "head": rec.head, "seq": rec.seq, "bytes": rec.extents[0]["len"] if rec.extents else 0,
            "params": meta.get("params"), "tensors": meta.get("tensors"), "config": meta.get("config")}


@dataclass(frozen=True)
class Extent:
    off: int
    length: int


def extent_of(rec: Record) -> Extent:
    """The record's one extent (the store has bounded it to the writer's section already)."""
    if len(rec.extents) != 1:
        raise StoreError(f"model record {rec.name!r} has {len(rec.extents)} extents, expected 1")
    e = rec.extents[0]
    return Extent(int(e["off"]), int(e["len"]))


class MappedModel:
    """A model's checkpoint mapped read-only from the device. `tensors` are views onto the
    mapping; the mapping goes away when close() is called and no view is left."""

    def __init__(self, path: str, device_size: int, ext: Extent) -> None:
        if not 0 <= ext.off <= device_size or not 0 <= ext.length <= device_size - ext.off:
            raise StoreError(f"model extent {ext.off:#x}+{ext.length:#x} lies outside the {device_size:#x}-byte device")
        start = ext.off - ext.off % ALIGN
        end = min(-(-(ext.off + ext.length) // ALIGN) * ALIGN, device_size)
        self.path = path
        self.window = (start, end)
        fd = os.open(path, os.O_RDONLY)
        try:
            self.mm: mmap.mmap | None = mmap.mmap(fd, end - start, mmap.MAP_SHARED, mmap.PROT_READ, offset=start)
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        self.buf = memoryview(self.mm)[ext.off - start : ext.off - start + ext.length]
        try:
            self.index: Index = checkpoint.parse(self.buf)
        except CheckpointError:
            self.close()
            raise
        self.tensors = checkpoint.views(self.buf, self.index)

    @property
    def config(self) -> JsonObject:
        return self.index.config

    def verify(self) -> list[str]:
        """Names of the tensors whose data fails its crc32 (reads every byte)."""
        return checkpoint.bad_tensors(self.buf, self.index.tensors)

    def close(self) -> None:
        self.tensors = {}
        if self.mm is not None:
            try:
                self.buf.release()
                self.mm.close()
            except BufferError:
                pass  # arrays handed out still use it: it is unmapped when the last one goes
            self.mm = None

    def __enter__(self) -> MappedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_model(store: Store, name: str) -> MappedModel:
    """Find `name` and map it. The extent is invalidated in this head's cache first: another head
    wrote it, and a line cached from an earlier use of that memory would be stale."""
    ext = extent_of(find(store, name))
    store.cache.invalidate(ext.off, ext.length)
    return MappedModel(store.path, store.size, ext)


def check(store: Store, name: str | None = None) -> JsonObject:
    """Every tensor's crc32 in every model (or in `name`), read through the mapping."""
    out: list[JsonObject] = []
    for rec in models(store) if name is None else [find(store, name)]:
        item: JsonObject = {"name": rec.name[len(PREFIX):], "ok": False}
        try:
            with open_model(store, rec.name[len(PREFIX):]) as m:
                bad = m.verify()
                item.update(tensors=len(m.index.tensors), bad_tensors=bad, ok=not bad)
        except (CheckpointError, StoreError) as exc:
            item["error"] = str(exc)
        out.append(item)
    return {"models": out, "ok": all(i["ok"] for i in out)}
