"""Mooncake's KVCache pool in the MHD: one arena per head, every head reads every arena in place.

Each head publishes one template-store record `kvpool/<head>` whose extent is its arena
(tbagent.kv.layout), so space comes from the store's allocator, in the head's own section, and
a head only ever writes memory it owns. The pool is every arena of the same model config and
block size found through the store.

Writes (put, eviction, use times, stats) go to this head's arena only, through the store's
mapping, flushed, with the slot's state flag last. Reads invalidate first and validate
everything: another head's arena is untrusted, and a bad block is skipped with a reason in
`problems`, never followed."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

import tbagent.store.core as store_core
from tbagent.functions.llm import Config
from tbagent.kv import layout
from tbagent.kv.layout import HDR_SIZE, STATE_OFFSET, USE, USE_SIZE, Geometry, Header, State
from tbagent.store import Record, Store, StoreError

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

F32 = npt.NDArray[np.float32]
PREFIX = "kvpool/"
EVICTED = "evicted while being read"
# A use time further ahead than this is a buggy (or hostile) head's: ignored, so it cannot pin blocks.
FUTURE_SLACK_NS = 60 * 10**9
PROBE = 8  # use-table entries tried per key before the oldest of them is replaced
_ZERO = bytes(1 << 20)


class PoolError(StoreError):
    """A pool operation failed or a block was refused; the message says why."""


def record_name(head: int) -> str:
    return f"{PREFIX}{head}"


@dataclass(frozen=True)
class Arena:
    head: int
    off: int  # device offset of the arena's first byte
    geo: Geometry


@dataclass(frozen=True)
class Block:
    """A block read in place: k and v are read-only views onto the shared mapping, valid until
    its owner evicts it (check with KVPool.still_valid)."""

    key: bytes
    head: int
    slot: int
    seq: int
    k: F32
    v: F32


@dataclass(frozen=True)
class Entry:
    head: int
    slot: int
    hdr: Header


def format_arena(store: Store, cfg: Config, block_tokens: int, slots: int) -> Record:
    """Publish this head's empty arena (zero-filled: every slot free, no use recorded)."""
    geo = Geometry(cfg, block_tokens, slots)
    chunks = [memoryview(_ZERO)] * (geo.size // len(_ZERO)) + [memoryview(_ZERO)[:geo.size % len(_ZERO)]]
    return store.publish(record_name(store.head), [chunks], geo.meta())


class KVPool:
    """This head's handle on the pool. cfg and block_tokens default to those of its own arena."""

    def __init__(self, store: Store, cfg: Config | None = None, block_tokens: int | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.head = store.head
        self.clock = clock
        self.problems: list[JsonObject] = []
        self._thread_lock = threading.Lock()
        fd = os.open(store.path, os.O_RDONLY)
        try:
            # Read-only and shared: what get() hands out can never be written through.
            self.mapping: mmap.mmap | None = mmap.mmap(fd, store.size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self.bytes = np.frombuffer(self.mapping, dtype=np.uint8)
        try:
            self.cfg, self.block_tokens = self._defaults(cfg, block_tokens)
            self.fp = layout.fingerprint(self.cfg)
            self.arenas: dict[int, Arena] = {}
            self.refresh()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.mapping is not None:
            del self.bytes
            try:
                self.mapping.close()
            except BufferError:
                pass  # blocks handed out still use it: it goes when the last one does
            self.mapping = None

    def __enter__(self) -> KVPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- finding the arenas
    def _records(self) -> list[Record]:
        return [r for r in self.store.templates() if r.name.startswith(PREFIX)]

    def _defaults(self, cfg: Config | None, block_tokens: int | None) -> tuple[Config, int]:
        if cfg is not None and block_tokens is not None:
            return cfg, block_tokens
        own = next((r for r in self._records() if r.name == record_name(self.head) and r.head == self.head), None)
        if own is None:
            raise PoolError(f"head {self.head} has no kvpool arena: run `tbagent kv format` first")
        try:
            geo = Geometry.from_meta(own.payload.get("meta"))
        except ValueError as exc:
            raise PoolError(f"this head's arena: {exc}") from None
        return cfg or geo.cfg, block_tokens or geo.block_tokens

    def refresh(self) -> None:
        """Re-read which arenas exist (a head may have formatted its arena since)."""
        arenas: dict[int, Arena] = {}
        self.arena_problems: list[JsonObject] = []
        for rec in self._records():
            why = self._arena_problem(rec)
            if isinstance(why, str):
                self.arena_problems.append({"head": rec.head, "record": rec.name, "why": why})
            else:
                arenas[rec.head] = why
        self.arenas = arenas
        self.problems = list(self.arena_problems)

    def _arena_problem(self, rec: Record) -> Arena | str:
        if rec.name != record_name(rec.head):
            return f"record {rec.name!r} was published by head {rec.head}: a head publishes only its own arena"
        try:
            geo = Geometry.from_meta(rec.payload.get("meta"))
        except ValueError as exc:
            return f"arena meta refused: {exc}"
        if geo.cfg != self.cfg:
            return "arena of another model config"
        if geo.block_tokens != self.block_tokens:
            return f"arena of block_tokens {geo.block_tokens}, not {self.block_tokens}"
        if len(rec.extents) != 1:
            return f"arena record has {len(rec.extents)} extents, expected 1"
        off, length = int(rec.extents[0]["off"]), int(rec.extents[0]["len"])
        if geo.size > length or not 0 <= off <= self.store.size - geo.size:
            return f"arena of {geo.size} bytes does not fit its extent {off:#x}+{length:#x}"
        return Arena(rec.head, off, geo)

    @property
    def own(self) -> Arena:
        arena = self.arenas.get(self.head)
        if arena is None:
            raise PoolError(f"head {self.head} has no usable kvpool arena for this model: run `tbagent kv format`")
        return arena

    @property
    def geo(self) -> Geometry:
        return self.own.geo

    # --- raw access (every offset is bounded here, whatever computed it)
    def _span(self, off: int, length: int) -> None:
        if not 0 <= off <= self.store.size or not 0 <= length <= self.store.size - off:
            raise PoolError(f"range {off:#x}+{length:#x} lies outside the {self.store.size:#x}-byte device")

    def _read(self, off: int, length: int) -> bytes:
        self._span(off, length)
        self.store.cache.invalidate(off, length)
        return self.bytes[off:off + length].tobytes()

    def _write(self, off: int, data: bytes | memoryview) -> None:
        self._span(off, len(data))
        self.store.mm[off:off + len(data)] = data
        self.store.cache.flush(off, len(data))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Only this head writes its arena; this serialises its writers on this node (threads
        # and processes alike: each open() is its own flock owner).
        store_core.LOCK_DIR.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.store.path).replace("/", "_")
        with self._thread_lock, open(store_core.LOCK_DIR / f"kvpool{key}.{self.head}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # --- reading headers
    def _headers(self, arena: Arena) -> dict[bytes, Entry]:
        geo = arena.geo
        raw = self._read(arena.off + geo.hdr_off, geo.slots * HDR_SIZE)
        out: dict[bytes, Entry] = {}
        # Only non-free slots are parsed (one vector test finds them): a scan costs what is stored.
        states = np.frombuffer(raw, dtype="<u4").reshape(geo.slots, HDR_SIZE // 4)[:, STATE_OFFSET // 4]
        for slot in (int(s) for s in np.flatnonzero(states)):
            hdr = layout.unpack_header(raw[slot * HDR_SIZE:(slot + 1) * HDR_SIZE], slot)
            if isinstance(hdr, str):
                if hdr != "free":
                    self.problems.append({"head": arena.head, "slot": slot, "why": hdr})
            elif hdr.fp != self.fp:
                self.problems.append({"head": arena.head, "slot": slot, "why": "block of another model config"})
            elif hdr.key not in out or hdr.seq > out[hdr.key].hdr.seq:
                out[hdr.key] = Entry(arena.head, slot, hdr)
        return out

    def index(self) -> dict[bytes, list[Entry]]:
        """Every valid block header in the pool: key -> its copies, this head's first."""
        self.problems = list(self.arena_problems)  # what this scan finds, not every scan's
        out: dict[bytes, list[Entry]] = {}
        for head in sorted(self.arenas, key=lambda h: (h != self.head, h)):
            for key, entry in self._headers(self.arenas[head]).items():
                out.setdefault(key, []).append(entry)
        return out

    def exists(self, key: bytes) -> bool:
        return key in self.index()

    def match(self, keys: Sequence[bytes]) -> int:
        """How many of keys, from the first, are in the pool (the prefix cache hit, in blocks)."""
        idx = self.index()
        n = next((i for i, key in enumerate(keys) if key not in idx), len(keys))
        if self.head in self.arenas:
            self._count(n, len(keys) - n)
        return n

    # --- get
    def get(self, key: bytes) -> Block | None:
        """The block of `key` viewed in place, or None when the pool has none. A copy that fails
        validation is skipped (the reason goes to `problems`); when every copy fails, PoolError."""
        copies = self.index().get(key, [])
        reasons = []
        for entry in copies:
            block = self._view(entry)
            if isinstance(block, str):
                reasons.append(block)
                self.problems.append({"head": entry.head, "slot": entry.slot, "why": block})
                continue
            if self.head in self.arenas:
                self.touch(key)
            return block
        if any(r != EVICTED for r in reasons):
            where = [f"head {e.head} slot {e.slot}: {r}" for e, r in zip(copies, reasons, strict=True)]
            raise PoolError(f"block {key.hex()} refused: {'; '.join(where)}")
        return None

    def _view(self, entry: Entry) -> Block | str:
        arena = self.arenas[entry.head]
        geo = arena.geo
        off = arena.off + geo.slot_data(entry.slot)
        n = geo.part_bytes
        self._span(off, 2 * n)
        self.store.cache.invalidate(off, 2 * n)
        data = self.bytes[off:off + 2 * n]
        crc_ok = zlib.crc32(data.data) == entry.hdr.data_crc
        if not self.still_valid_entry(entry):
            return EVICTED  # its owner reused the slot meanwhile: a miss, not damage
        if not crc_ok:
            return "data checksum mismatch"
        k = data[:n].view("<f4").reshape(geo.shape)
        v = data[n:].view("<f4").reshape(geo.shape)
        return Block(entry.hdr.key, entry.head, entry.slot, entry.hdr.seq, k, v)

    def still_valid_entry(self, entry: Entry) -> bool:
        arena = self.arenas[entry.head]
        raw = self._read(arena.off + arena.geo.slot_hdr(entry.slot), HDR_SIZE)
        hdr = layout.unpack_header(raw, entry.slot)
        return isinstance(hdr, Header) and hdr == entry.hdr

    def still_valid(self, block: Block) -> bool:
        """Whether block's slot still holds it (its owner has not evicted or reused it)."""
        entry = self.index().get(block.key, [])
        return any(e.head == block.head and e.slot == block.slot and e.hdr.seq == block.seq for e in entry)

    # --- put
    def put(self, key: bytes, k: npt.ArrayLike, v: npt.ArrayLike) -> Entry:
        """Store a block in this head's arena (unless the pool has it already): data first,
        flushed, then the header, flushed, then its state flag, the publication point."""
        if len(key) != layout.KEY_BYTES:
            raise PoolError(f"a block key is {layout.KEY_BYTES} bytes, not {len(key)}")
        arena = self.own
        geo = arena.geo
        ka, va = (np.ascontiguousarray(x, dtype="<f4") for x in (k, v))
        if ka.shape != geo.shape or va.shape != geo.shape:
            raise PoolError(f"block k/v are {ka.shape}/{va.shape}, expected {geo.shape}")
        with self._locked():
            idx = self.index()
            if key in idx:
                return idx[key][0]
            own = {e.slot for copies in idx.values() for e in copies if e.head == self.head}
            slot = next((s for s in range(geo.slots) if s not in own), None)
            if slot is None:
                slot = self._victim(idx)
            hdr_off = arena.off + geo.slot_hdr(slot)
            self.store.cache.publish_u32(hdr_off + STATE_OFFSET, State.FREE)  # readers stop first
            data_off = arena.off + geo.slot_data(slot)
            kb, vb = ka.reshape(-1).view(np.uint8).data, va.reshape(-1).view(np.uint8).data
            self._write(data_off, kb)
            self._write(data_off + geo.part_bytes, vb)
            crc = zlib.crc32(vb, zlib.crc32(kb))
            seq = self.clock()  # the put time: the block's first use
            self._write(hdr_off, layout.pack_header(key, self.fp, seq, crc, slot))
            self.store.cache.publish_u32(hdr_off + STATE_OFFSET, State.PUBLISHED)
            return Entry(self.head, slot, Header(State.PUBLISHED, key, self.fp, seq, crc))

    # --- use times and LRU
    def _uses(self, arena: Arena) -> dict[bytes, int]:
        geo = arena.geo
        raw = self._read(arena.off + geo.use_off, geo.use_entries * USE_SIZE)
        out: dict[bytes, int] = {}
        for i in range(geo.use_entries):
            key, t, crc = USE.unpack_from(raw, i * USE_SIZE)
            if crc == layout.use_crc(key, t) and t and t > out.get(key, 0):
                out[key] = t
        return out

    def touch(self, key: bytes) -> None:
        """Record that this head used key now, in its own use table."""
        arena = self.own
        geo = arena.geo
        with self._locked():
            raw = self._read(arena.off + geo.use_off, geo.use_entries * USE_SIZE)
            start = int.from_bytes(key[:8], "little") % geo.use_entries
            probe = [(start + j) % geo.use_entries for j in range(min(PROBE, geo.use_entries))]
            slot, oldest = probe[0], None
            for i in probe:
                k, t, crc = USE.unpack_from(raw, i * USE_SIZE)
                if crc != layout.use_crc(k, t) or k == key:
                    slot = i
                    break
                if oldest is None or t < oldest:
                    slot, oldest = i, t
            t = self.clock()
            self._write(arena.off + geo.use_entry(slot), USE.pack(key, t, layout.use_crc(key, t)))

    def last_use(self, idx: dict[bytes, list[Entry]] | None = None) -> dict[bytes, int]:
        """Each key's last use across every head: its puts and every head's use table."""
        idx = self.index() if idx is None else idx
        out = {key: max(e.hdr.seq for e in copies) for key, copies in idx.items()}
        horizon = self.clock() + FUTURE_SLACK_NS
        for arena in self.arenas.values():
            for key, t in self._uses(arena).items():
                if key in out and out[key] < t <= horizon:
                    out[key] = t
        return out

    def _victim(self, idx: dict[bytes, list[Entry]]) -> int:
        last = self.last_use(idx)
        mine = [(last[key], e.slot) for key, copies in idx.items() for e in copies if e.head == self.head]
        _, slot = min(mine)
        return slot

    def evict(self, capacity: int) -> list[bytes]:
        """Keep the pool within `capacity` blocks by global LRU: the `capacity` most recently
        used blocks of every head survive, and this head frees its own blocks that do not (other
        heads free theirs when they run evict)."""
        if capacity < 0:
            raise PoolError(f"capacity must be >= 0, not {capacity}")
        arena = self.own
        with self._locked():
            idx = self.index()
            last = self.last_use(idx)
            blocks = sorted(((last[key], e.head, e.slot, key) for key, copies in idx.items() for e in copies),
                            reverse=True)
            gone = [(slot, key) for _, head, slot, key in blocks[capacity:] if head == self.head]
            for slot, _ in gone:
                self.store.cache.publish_u32(arena.off + arena.geo.slot_hdr(slot) + STATE_OFFSET, State.FREE)
            return [key for _, key in gone]

    # --- stats
    def _read_stats(self, arena: Arena) -> tuple[int, int] | None:
        hits, misses, crc = layout.STATS.unpack(self._read(arena.off, layout.STATS.size))
        if not hits and not misses and not crc:
            return 0, 0
        return (hits, misses) if crc == layout.stats_crc(hits, misses) else None

    def _count(self, hits: int, misses: int) -> None:
        arena = self.own
        with self._locked():
            h, m = self._read_stats(arena) or (0, 0)
            h, m = h + hits, m + misses
            self._write(arena.off, layout.STATS.pack(h, m, layout.stats_crc(h, m)))

    def stats(self) -> JsonObject:
        idx = self.index()
        heads: JsonObject = {}
        for head, arena in sorted(self.arenas.items()):
            blocks = sum(1 for copies in idx.values() for e in copies if e.head == head)
            counts = self._read_stats(arena)
            heads[str(head)] = {"blocks": blocks, "slots": arena.geo.slots, "bytes": blocks * arena.geo.slot_bytes,
                                "arena_bytes": arena.geo.size, "hits": counts[0] if counts else None,
                                "misses": counts[1] if counts else None}
        total = sum(len(c) for c in idx.values())
        nbytes = sum(len(c) * self.arenas[c[0].head].geo.slot_bytes for c in idx.values())
        return {"blocks": total, "keys": len(idx), "bytes": nbytes,
                "block_tokens": self.block_tokens, "heads": heads, "problems": self.problems[-20:]}
