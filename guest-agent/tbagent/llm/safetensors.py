"""The safetensors file format (Hugging Face's), the `disk` baseline's checkpoint:

  u64 LE     N, the header's length
  N bytes    JSON: {"NAME": {"dtype": "F16", "shape": [...], "data_offsets": [begin, end]}, ...,
             "__metadata__": {str: str}}, padded with spaces to 8 bytes
  rest       the tensors' bytes, packed, offsets relative to the end of the header

Our model config travels as a JSON string in the metadata under CONFIG_KEY. A file is read as
untrusted: the header is bounded and every offset checked before any array is made."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from tbagent import boundedjson
from tbagent.llm.checkpoint import DTYPES, CheckpointError, dtype_name

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

LEN = struct.Struct("<Q")
MAX_HEADER = 100 << 20  # the reference implementation's own limit
MAX_DEPTH = 8
CONFIG_KEY = "tbagent.config"
CODES = {"float16": "F16", "float32": "F32", "float64": "F64", "int8": "I8", "uint8": "U8", "int32": "I32",
         "int64": "I64"}
NAMES = {v: k for k, v in CODES.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # our name (checkpoint.DTYPES)
    shape: tuple[int, ...]
    begin: int  # relative to the data section
    end: int


@dataclass(frozen=True)
class Header:
    config: JsonObject
    entries: tuple[Entry, ...]
    data_start: int  # absolute file offset of the data section
    data_len: int


def write(path: str, config: JsonObject, tensors: Mapping[str, np.ndarray]) -> int:
    """Write `tensors` (sorted by name) as a safetensors file; the file's size is returned.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    arrays = {n: np.ascontiguousarray(tensors[n], dtype=DTYPES[dtype_name(tensors[n].dtype)]) for n in sorted(tensors)}
    header: JsonObject = {"__metadata__": {CONFIG_KEY: json.dumps(config, sort_keys=True, separators=(",", ":"))}}
    pos = 0
    for name, arr in arrays.items():
        header[name] = {"dtype": CODES[dtype_name(arr.dtype)], "shape": list(arr.shape), "data_offsets": [pos, pos + arr.nbytes]}
        pos += arr.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(LEN.pack(len(body)) + body)
        for arr in arrays.values():
            fh.write(arr.reshape(-1).view(np.uint8).data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return LEN.size + len(body) + pos


def _int(v: Json) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(name: str, raw: Json, data_len: int) -> Entry:
    if not isinstance(raw, dict):
        raise CheckpointError(f"safetensors tensor {name!r:.80} is not an object")
    code, shape, offs = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if code not in NAMES:
        raise CheckpointError(f"safetensors tensor {name!r:.80} has dtype {code!r:.20}, not one of {', '.join(NAMES)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"safetensors tensor {name!r:.80} has a bad shape {shape!r:.80}")
    if not isinstance(offs, list) or len(offs) != 2 or not all(_int(o) for o in offs) \
            or not 0 <= offs[0] <= offs[1] <= data_len:
        raise CheckpointError(f"safetensors tensor {name!r:.80} has data_offsets {offs!r:.80} outside the {data_len}-byte data")
    dtype = NAMES[code]
    if offs[1] - offs[0] != math.prod(shape) * DTYPES[dtype].itemsize:
        raise CheckpointError(f"safetensors tensor {name!r:.80}: {offs[1] - offs[0]} bytes do not hold shape {shape}")
    return Entry(name, dtype, tuple(shape), offs[0], offs[1])


def read_header(fh: BinaryIO, file_size: int) -> Header:
    raw = fh.read(LEN.size)
    if len(raw) != LEN.size:
        raise CheckpointError("safetensors file shorter than its length field")
    (n,) = LEN.unpack(raw)
    if not 2 <= n <= min(MAX_HEADER, file_size - LEN.size):
        raise CheckpointError(f"safetensors header length {n} is out of range for a {file_size}-byte file")
    try:
        data = boundedjson.loads(fh.read(n), MAX_HEADER, MAX_DEPTH)
    except ValueError as exc:
        raise CheckpointError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError("safetensors header is not a JSON object")
    meta = data.pop("__metadata__", {})
    if not isinstance(meta, dict) or not isinstance(meta.get(CONFIG_KEY, "{}"), str):
        raise CheckpointError("safetensors __metadata__ is not an object of strings")
    try:
        config = boundedjson.loads(meta.get(CONFIG_KEY, "{}"), MAX_HEADER, MAX_DEPTH)
    except ValueError as exc:
        raise CheckpointError(f"safetensors config metadata is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError("safetensors config metadata is not a JSON object")
    data_len = file_size - LEN.size - n
    entries = sorted((_entry(k, v, data_len) for k, v in data.items()), key=lambda e: e.begin)
    # The format requires the data to be packed: no gaps, no overlaps, nothing after the end.
    pos = 0
    for e in entries:
        if e.begin != pos:
            raise CheckpointError(f"safetensors tensor {e.name!r:.80} starts at {e.begin}, expected {pos} (gap or overlap)")
        pos = e.end
    if pos != data_len:
        raise CheckpointError(f"safetensors data is {data_len} bytes but the tensors cover {pos}")
    return Header(config, tuple(sorted(entries, key=lambda e: e.name)), LEN.size + n, data_len)


def read(path: str) -> tuple[JsonObject, dict[str, np.ndarray], int]:
    """(config, tensors, bytes read): the data section read with one readinto into one local
    buffer, and the tensors are views of that buffer."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        header = read_header(fh, size)
        buf = np.empty(header.data_len, np.uint8)
        mv = buf.data
        got = 0
        while got < header.data_len:  # readinto may return less than asked for
            n = fh.readinto(mv[got:])
            if not n:
                raise CheckpointError(f"{path}: file ended after {got} of {header.data_len} data bytes")
            got += n
    out = {}
    for e in header.entries:
        dt = DTYPES[e.dtype]
        out[e.name] = buf[e.begin : e.end].view(dt).reshape(e.shape)
    return header.config, out, got
