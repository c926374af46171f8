"""On-memory layout of one head's KV arena (the one extent of its store record `kvpool/<head>`).
All integers little-endian; every part starts on a page, so block data can be viewed in place.

  0                  stats line: hits u64, misses u64, crc u32 (matches seen by this head)
  PAGE               slot headers: `slots` x HDR_SIZE (one cache line each, flushed alone)
  use_off            use table: `use_entries` x USE_SIZE: (key, last-use time) this head recorded
  data_off           `slots` block slots of slot_bytes: K then V, each float32
                     [layers, heads, block_tokens, head_dim]

A slot header's `state` is the last thing written (the publication point); its crc covers every
other field, and the slot's index, so a header copied into another slot does not validate.

Only the owning head writes any of it: other heads read, and record their own uses in their own
use tables (no line is ever written by two heads)."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from tbagent.functions.llm import Config

PAGE = 4096
LINE = 64
KEY_BYTES = 16
VERSION = 1
# magic state key fp seq data_crc slot hdr_crc
HDR = struct.Struct("<II16s16sQIII")
HDR_SIZE = LINE
HDR_MAGIC = 0x3142564B  # "KVB1"
STATE_OFFSET = 4
USE = struct.Struct("<16sQI")  # key, time_ns, crc
USE_SIZE = 32
STATS = struct.Struct("<QQI")  # hits, misses, crc
MAX_SLOTS = 1 << 20
MAX_BLOCK_TOKENS = 1 << 16


class State(IntEnum):
    FREE = 0
    PUBLISHED = 0x4C425550  # "PUBL"


def fingerprint(cfg: Config) -> bytes:
    """16 bytes naming a model config: blocks of another model never match."""
    text = json.dumps(cfg.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(text, digest_size=KEY_BYTES, person=b"tb-kv-config").digest()


def block_keys(tokens: Sequence[int], block_tokens: int) -> list[bytes]:
    """Mooncake's hash_ids: key i hashes every token up to the end of full block i (a chain, so
    equal keys mean equal prefixes). The partial last block has no key."""
    if not 1 <= block_tokens <= MAX_BLOCK_TOKENS:
        raise ValueError(f"kv: block_tokens={block_tokens} is out of range 1..{MAX_BLOCK_TOKENS}")
    ids = np.asarray(tokens, dtype="<i8")
    if ids.ndim != 1:
        raise ValueError("kv: tokens must be a flat sequence of integers")
    prev = hashlib.blake2b(struct.pack("<Q", block_tokens), digest_size=KEY_BYTES, person=b"tb-kv-root").digest()
    keys = []
    for i in range(len(ids) // block_tokens):
        prev = hashlib.blake2b(prev + ids[i * block_tokens:(i + 1) * block_tokens].tobytes(),
                               digest_size=KEY_BYTES, person=b"tb-kv-block").digest()
        keys.append(prev)
    return keys


def _round(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class Geometry:
    """Where everything lies in an arena, from the model config, block size and slot count."""

    cfg: Config
    block_tokens: int
    slots: int

    def __post_init__(self) -> None:
        if not 1 <= self.block_tokens <= min(MAX_BLOCK_TOKENS, self.cfg.max_ctx):
            raise ValueError(f"kv: block_tokens={self.block_tokens} is out of range 1..{self.cfg.max_ctx}")
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"kv: slots={self.slots} is out of range 1..{MAX_SLOTS}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.cfg.layers, self.cfg.heads, self.block_tokens, self.cfg.head_dim)

    @property
    def part_bytes(self) -> int:
        """Bytes of K (or of V) in one block."""
        layers, heads, bt, hd = self.shape
        return layers * heads * bt * hd * 4

    @property
    def slot_bytes(self) -> int:
        return _round(2 * self.part_bytes)

    @property
    def use_entries(self) -> int:
        return 2 * self.slots  # room for the blocks this head reads in other arenas too

    @property
    def hdr_off(self) -> int:
        return PAGE

    @property
    def use_off(self) -> int:
        return self.hdr_off + _round(self.slots * HDR_SIZE)

    @property
    def data_off(self) -> int:
        return self.use_off + _round(self.use_entries * USE_SIZE)

    @property
    def size(self) -> int:
        return self.data_off + self.slots * self.slot_bytes

    def slot_hdr(self, slot: int) -> int:
        return self.hdr_off + slot * HDR_SIZE

    def slot_data(self, slot: int) -> int:
        return self.data_off + slot * self.slot_bytes

    def use_entry(self, index: int) -> int:
        return self.use_off + index * USE_SIZE

    def meta(self) -> dict[str, object]:
        return {"kind": "kvpool", "version": VERSION, "config": self.cfg.to_json(), "block_tokens": self.block_tokens,
                "slots": self.slots, "fingerprint": fingerprint(self.cfg).hex(), "bytes": self.size}

    @classmethod
    def from_meta(cls, meta: object) -> Geometry:
        """An arena's geometry from its record's meta (untrusted: another head wrote it)."""
        if not isinstance(meta, dict) or meta.get("kind") != "kvpool":
            raise ValueError("not a kvpool record (meta.kind is not 'kvpool')")
        if meta.get("version") != VERSION:
            raise ValueError(f"kvpool version {meta.get('version')!r:.20} is not {VERSION}")
        bt, slots = meta.get("block_tokens"), meta.get("slots")
        if not (isinstance(bt, int) and isinstance(slots, int)) or isinstance(bt, bool) or isinstance(slots, bool):
            raise ValueError("kvpool meta: block_tokens and slots must be integers")
        return cls(Config.from_json(meta.get("config")), bt, slots)


@dataclass(frozen=True)
class Header:
    state: int
    key: bytes
    fp: bytes
    seq: int
    data_crc: int


def header_crc(key: bytes, fp: bytes, seq: int, data_crc: int, slot: int) -> int:
    return zlib.crc32(struct.pack("<16s16sQII", key, fp, seq, data_crc, slot))


def pack_header(key: bytes, fp: bytes, seq: int, data_crc: int, slot: int, state: State = State.FREE) -> bytes:
    return HDR.pack(HDR_MAGIC, state, key, fp, seq, data_crc, slot, header_crc(key, fp, seq, data_crc, slot))


def unpack_header(raw: bytes, slot: int) -> Header | str:
    """The header if it is published and intact; else why not ('free' for an empty slot)."""
    magic, state, key, fp, seq, data_crc, rslot, crc = HDR.unpack_from(raw)
    if state == State.FREE:
        return "free"
    if magic != HDR_MAGIC:
        return "bad header magic"
    if state != State.PUBLISHED:
        return f"unknown state {state:#x}"
    if rslot != slot or crc != header_crc(key, fp, seq, data_crc, slot):
        return "header checksum mismatch"
    return Header(state, key, fp, seq, data_crc)


def use_crc(key: bytes, t: int) -> int:
    return zlib.crc32(b"USE" + key + struct.pack("<Q", t))


def stats_crc(hits: int, misses: int) -> int:
    return zlib.crc32(struct.pack("<QQ", hits, misses) + b"STATS")
