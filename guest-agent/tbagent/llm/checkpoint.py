"""The loading-optimised checkpoint layout. All integers little-endian.

  offset 0        header page: magic, version, page size, index length, index crc32
  PAGE            the index, JSON: {"config": {...}, "tensors": [{name, dtype, shape, offset,
                  length, crc32}, ...]}, padded to a page
  data            every tensor's bytes, each starting on a page boundary (so a tensor can be
                  mapped, or copied in page-sized chunks, on its own)

A checkpoint is read from memory another head wrote: `parse` trusts nothing in it."""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tbagent import boundedjson

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

MAGIC = b"TBCKPT01"
VERSION = 1
PAGE = 4096
HEADER = struct.Struct("<8sIIQI")  # magic version page index_len index_crc
MAX_INDEX = 16 << 20
MAX_DEPTH = 16
MAX_TENSORS = 65536
MAX_NDIM = 8
MAX_NAME = 255
# Explicitly little-endian: a checkpoint written on one head is read on another.
DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(code) for name, code in (("float16", "<f2"), ("float32", "<f4"), ("float64", "<f8"),
                                            ("int8", "i1"), ("uint8", "u1"), ("int32", "<i4"), ("int64", "<i8"))
}

Chunk = bytes | memoryview


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int
    crc32: int

    def to_json(self) -> JsonObject:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
                "length": self.length, "crc32": self.crc32}


@dataclass(frozen=True)
class Index:
    config: JsonObject
    tensors: tuple[TensorEntry, ...]
    size: int  # bytes of the whole checkpoint: the end of the last tensor's page

    @property
    def data_bytes(self) -> int:
        return sum(t.length for t in self.tensors)


def round_page(n: int) -> int:
    return -(-n // PAGE) * PAGE


def dtype_name(dt: np.dtype[np.generic]) -> str:
    for name, known in DTYPES.items():
        if dt == known:
            return name
    raise CheckpointError(f"dtype {dt} is not one a checkpoint can hold ({', '.join(DTYPES)})")


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # A no-op for the usual C-contiguous little-endian array: pack must not copy a model.
    want = DTYPES[dtype_name(arr.dtype)]
    return np.ascontiguousarray(arr, dtype=want)


def _bytes(arr: np.ndarray) -> memoryview:
    return arr.reshape(-1).view(np.uint8).data


def build_index(config: JsonObject, tensors: Mapping[str, np.ndarray]) -> tuple[bytes, Index, list[np.ndarray]]:
    """The header page plus padded index, the Index, and the tensors as they will be written."""
    arrays = [_contiguous(tensors[name]) for name in sorted(tensors)]
    # Offsets depend on the index's length and the index holds the offsets: lay out again with
    # the room the last try needed until it fits (twice or three times).
    crcs = [zlib.crc32(_bytes(arr)) for arr in arrays]
    reserve = 0
    while True:
        offset = PAGE + round_page(reserve)
        entries = []
        for name, arr, crc in zip(sorted(tensors), arrays, crcs, strict=True):
            entries.append(TensorEntry(name, dtype_name(arr.dtype), tuple(int(d) for d in arr.shape), offset,
                                       arr.nbytes, crc))
            offset += round_page(arr.nbytes)
        body = json.dumps({"config": config, "tensors": [e.to_json() for e in entries]},
                          separators=(",", ":"), sort_keys=True).encode()
        if reserve and len(body) <= round_page(reserve):
            break
        reserve = len(body)
    if len(body) > MAX_INDEX:
        raise CheckpointError(f"index of {len(body)} bytes exceeds {MAX_INDEX}")
    head = HEADER.pack(MAGIC, VERSION, PAGE, len(body), zlib.crc32(body))
    first = head + bytes(PAGE - len(head)) + body + bytes(round_page(reserve) - len(body))
    return first, Index(config, tuple(entries), offset), arrays


def pack(config: JsonObject, tensors: Mapping[str, np.ndarray]) -> list[Chunk]:
    """The checkpoint as a list of chunks to be written one after the other: the tensors'
    own memory, never one big copy of the model."""
    first, _, arrays = build_index(config, tensors)
    chunks: list[Chunk] = [first]
    for arr in arrays:
        if arr.nbytes:
            chunks.append(_bytes(arr))
        pad = round_page(arr.nbytes) - arr.nbytes
        if pad:
            chunks.append(bytes(pad))
    return chunks


def _int(value: Json) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(raw: Json, i: int, lo: int, hi: int) -> TensorEntry:
    where = f"tensor {i}"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise CheckpointError(f"{where} has no valid name (1 to {MAX_NAME} printable characters): {name!r:.80}")
    where = f"tensor {name!r}"
    dtype, shape = raw.get("dtype"), raw.get("shape")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where} has dtype {dtype!r:.40}, not one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r:.80}: not a list of at most {MAX_NDIM} non-negative integers")
    fields = [raw.get(k) for k in ("offset", "length", "crc32")]
    if not all(_int(f) for f in fields):
        raise CheckpointError(f"{where}: offset, length and crc32 must be integers")
    offset, length, crc = (int(f) for f in fields if f is not None)
    if length != math.prod(shape) * DTYPES[dtype].itemsize:  # Python ints: no overflow
        raise CheckpointError(f"{where}: length {length} is not its shape {shape} x {DTYPES[dtype].itemsize} bytes")
    if offset % PAGE or not lo <= offset or not 0 <= length <= hi - offset:
        raise CheckpointError(f"{where}: data at {offset:#x}+{length:#x} is unaligned or outside [{lo:#x}, {hi:#x})")
    if not 0 <= crc < 1 << 32:
        raise CheckpointError(f"{where}: crc32 {crc} out of range")
    return TensorEntry(name, dtype, tuple(shape), offset, length, crc)


def parse(buf: bytes | bytearray | memoryview) -> Index:
    """The index of the checkpoint in `buf`, every field checked against `buf`'s bounds."""
    mv = memoryview(buf).cast("B")
    if len(mv) < PAGE:
        raise CheckpointError(f"checkpoint of {len(mv)} bytes is shorter than its header page")
    magic, version, page, index_len, index_crc = HEADER.unpack_from(mv)
    if magic != MAGIC:
        raise CheckpointError(f"not a checkpoint (magic {bytes(magic)!r})")
    if version != VERSION or page != PAGE:
        raise CheckpointError(f"unsupported checkpoint version {version} (page {page})")
    if not 0 < index_len <= min(MAX_INDEX, len(mv) - PAGE):
        raise CheckpointError(f"index length {index_len} is out of range for a {len(mv)}-byte checkpoint")
    body = bytes(mv[PAGE : PAGE + index_len])
    if zlib.crc32(body) != index_crc:
        raise CheckpointError("index checksum mismatch: the checkpoint is corrupt")
    try:
        data = boundedjson.loads(body, MAX_INDEX, MAX_DEPTH)
    except ValueError as exc:
        raise CheckpointError(f"index is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("tensors"), list):
        raise CheckpointError("index is not an object with a config object and a tensors list")
    raw = data["tensors"]
    if len(raw) > MAX_TENSORS:
        raise CheckpointError(f"index lists {len(raw)} tensors, more than {MAX_TENSORS}")
    lo = PAGE + round_page(index_len)
    entries = [_entry(r, i, lo, len(mv)) for i, r in enumerate(raw)]
    if len({e.name for e in entries}) != len(entries):
        raise CheckpointError("index names a tensor twice")
    end = lo
    for a, b in zip(ordered := sorted(entries, key=lambda e: e.offset), ordered[1:], strict=False):
        if a.offset + a.length > b.offset:
            raise CheckpointError(f"tensors {a.name!r} and {b.name!r} overlap")
    if ordered:
        end = max(lo, round_page(ordered[-1].offset + ordered[-1].length))
    return Index(data["config"], tuple(entries), min(end, len(mv)))


def views(buf: bytes | bytearray | memoryview, index: Index) -> dict[str, np.ndarray]:
    """Read-only arrays straight onto `buf` (no copy), one per tensor of a parsed index."""
    out = {}
    for e in index.tensors:
        dt = DTYPES[e.dtype]
        arr = np.frombuffer(buf, dtype=dt, count=e.length // dt.itemsize, offset=e.offset).reshape(e.shape)
        arr.flags.writeable = False
        out[e.name] = arr
    return out


def bad_tensors(buf: bytes | bytearray | memoryview, entries: Iterable[TensorEntry]) -> list[str]:
    """Names of the tensors whose data fails its crc32."""
    mv = memoryview(buf).cast("B")
    return [e.name for e in entries if zlib.crc32(mv[e.offset : e.offset + e.length]) != e.crc32]


def verify(buf: bytes | bytearray | memoryview, index: Index) -> None:
    bad = bad_tensors(buf, index.tensors)
    if bad:
        raise CheckpointError(f"{len(bad)} tensor(s) fail their crc32: {', '.join(bad[:5])}")
