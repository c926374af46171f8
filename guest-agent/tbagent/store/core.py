"""The template store proper: format, publish, list, read, delete, check, gc."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid as uuidlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent.store import cachectl, schema
from tbagent.store.layout import (
    EXTENT_ALIGN,
    HWM,
    MAX_PAYLOAD,
    MAX_SEQ,
    PAGE,
    REC,
    REC_MAGIC,
    SB,
    SLOT,
    STATE_OFFSET,
    Kind,
    State,
    Superblock,
    hwm_crc,
    record_crc,
)

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

Blob = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]
LOCK_DIR = Path(os.environ.get("CXLTB_LOCK_DIR", "/run/cxltb"))


class StoreError(Exception):
    """A store operation failed; the message says why."""


class StoreFull(StoreError):
    pass


@dataclass(frozen=True)
class Record:
    head: int
    slot: int
    seq: int
    kind: Kind
    payload: JsonObject

    @property
    def name(self) -> str:
        return str(self.payload.get("name", ""))

    @property
    def extents(self) -> list[dict[str, int]]:
        return list(self.payload.get("extents", []))


@dataclass
class Scan:
    records: list[Record] = field(default_factory=list)
    problems: list[JsonObject] = field(default_factory=list)
    # The highest sequence number in each head's slots whatever their state (a reclaimed
    # record keeps its header): with the stored mark, what a head must never issue again.
    seqs: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Slot:
    status: str
    record: Record | None = None
    why: str = ""
    seq: int = 0  # the header's sequence number when the header is intact, else 0


class Store:
    """One head's view of the store on a dax device (or, in tests, a plain file)."""

    def __init__(self, path: str, head: int, attach: cachectl.Attach | None = None) -> None:
        self.path = path
        self.head = head
        self.fd = os.open(path, os.O_RDWR)
        try:
            self.size = _device_size(path, self.fd)
            # Looked up at call time, so a test can swap in a fake for every Store it opens.
            self.mm, self.cache = (attach or cachectl.attach)(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self._sb: Superblock | None = None

    def close(self) -> None:
        self.cache.close()
        del self.cache  # releases any buffer export held by ctypes before the unmap
        self.mm.close()
        os.close(self.fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- low-level access: every read of another head's data is preceded by an invalidate
    def _span(self, off: int, length: int) -> None:
        # The cache maintenance library works on raw addresses: a range outside the mapping
        # would fault in it, so no offset reaches it unchecked.
        if not 0 <= off <= self.size or not 0 <= length <= self.size - off:
            raise StoreError(f"{self.path}: range {off:#x}+{length:#x} lies outside the device's {self.size:#x} bytes")

    def _read(self, off: int, length: int) -> bytes:
        self._span(off, length)
        self.cache.invalidate(off, length)
        return bytes(self.mm[off : off + length])

    def _write(self, off: int, data: bytes | bytearray | memoryview) -> None:
        self._span(off, len(data))
        self.mm[off : off + len(data)] = data
        self.cache.flush(off, len(data))

    @property
    def sb(self) -> Superblock:
        if self._sb is None:
            try:
                sb = Superblock.unpack(self._read(0, SB.size))
            except ValueError as exc:
                raise StoreError(f"{self.path}: {exc}") from None
            if sb.size != self.size:
                raise StoreError(f"{self.path}: superblock says {sb.size} bytes, device has {self.size}")
            if not 0 <= self.head < sb.nheads:
                raise StoreError(f"{self.path}: head {self.head} is outside the store's {sb.nheads} heads")
            self._sb = sb
        return self._sb

    @classmethod
    def format(cls, path: str, head: int, nheads: int, slots: int = 256, attach: cachectl.Attach | None = None) -> Store:
        store = cls(path, head, attach)
        try:
            sb = Superblock.geometry(store.size, nheads, slots, uuidlib.uuid4().bytes)
        except ValueError as exc:
            store.close()
            raise StoreError(str(exc)) from None
        store._write(sb.manifest_off, bytes(nheads * slots * SLOT))  # every slot FREE
        # The whole page: the high-water marks start empty (the superblock goes last, so a
        # format that dies half-way leaves no store behind).
        store._write(SB.size, bytes(PAGE - SB.size))
        store._write(0, sb.pack())
        store._sb = None
        return store

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Heads never share sections or slots; this serialises writers on this node only.
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path).replace("/", "_")
        with open(LOCK_DIR / f"store{key}.{self.head}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # --- scanning
    def _slot(self, head: int, index: int) -> Slot:
        raw = self._read(self.sb.slot_offset(head, index), SLOT)
        magic, state, seq, kind, rhead, plen, crc = REC.unpack_from(raw)
        if not any(raw[: REC.size]):
            return Slot("free")
        if magic != REC_MAGIC:
            return Slot("garbage", why="bad record magic")
        if state not in (State.FREE, State.PUBLISHED, State.RECLAIMED):
            return Slot("garbage", why=f"state {state:#x}")
        in_range = plen <= MAX_PAYLOAD and rhead == head and kind in (Kind.TEMPLATE, Kind.DELETE) and 1 <= seq <= MAX_SEQ
        payload = raw[REC.size : REC.size + plen] if in_range else b""
        intact = in_range and record_crc(seq, kind, rhead, payload) == crc
        # Even a reclaimed or unpublished header counts towards the head's sequence numbers.
        seen = seq if intact else 0
        if state == State.RECLAIMED:
            return Slot("reclaimed", seq=seen)
        if state == State.FREE:
            return Slot("unpublished", why=f"state {state:#x}", seq=seen)
        if not intact:
            return Slot("corrupt", why="checksum mismatch" if in_range else "header fields out of range")
        try:
            data = schema.decode(Kind(kind), payload, self.sb.section(head), self.sb.nheads)
        except schema.RecordError as exc:
            return Slot(exc.status, why=str(exc), seq=seen)
        return Slot("published", Record(head, index, seq, Kind(kind), data), seq=seen)

    def scan(self) -> Scan:
        out = Scan()
        for h in range(self.sb.nheads):
            for i in range(self.sb.slots):
                slot = self._slot(h, i)
                out.seqs[h] = max(out.seqs.get(h, 0), slot.seq)
                if slot.record is not None:
                    out.records.append(slot.record)
                elif slot.status not in ("free", "reclaimed"):
                    out.problems.append({"head": h, "slot": i, "status": slot.status, "why": slot.why})
        return out

    def _live(self, scan: Scan) -> tuple[list[Record], set[tuple[int, int]]]:
        deleted = {(r.payload["head"], r.payload["seq"]) for r in scan.records if r.kind is Kind.DELETE}
        live = [r for r in scan.records if r.kind is Kind.TEMPLATE and (r.head, r.seq) not in deleted]
        return sorted(live, key=lambda r: (r.head, r.seq)), deleted

    def templates(self) -> list[Record]:
        return self._live(self.scan())[0]

    def find(self, name: str) -> Record:
        for r in self.templates():
            if r.name == name:
                return r
        raise StoreError(f"no template named {name!r}")

    # --- writing
    def _allocate(self, scan: Scan, sizes: list[int]) -> list[int]:
        start, end = self.sb.section(self.head)
        used = sorted((e["off"], e["off"] + _round(e["len"])) for r in scan.records
                      if r.head == self.head and r.kind is Kind.TEMPLATE for e in r.extents)
        offsets = []
        for size in sizes:
            need, pos, placed = _round(size), start, None
            for a, b in used:
                if a - pos >= need:
                    placed = pos
                    break
                pos = max(pos, b)
            if placed is None and end - pos >= need:
                placed = pos
            if placed is None:
                free = end - start - sum(b - a for a, b in used)
                raise StoreFull(f"store full: head {self.head} needs {need} bytes, its section has {free} bytes free "
                                f"of {end - start}; delete templates and run `tbagent store gc`")
            offsets.append(placed)
            used = sorted([*used, (placed, placed + need)])
        return offsets

    def _append(self, scan: Scan, kind: Kind, payload: JsonObject) -> Record:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        if len(body) > SLOT - REC.size:
            raise StoreError(f"record payload of {len(body)} bytes exceeds {SLOT - REC.size}")
        # A slot holding a record that failed validation is not reused: it stays for `check`.
        taken = {r.slot for r in scan.records if r.head == self.head}
        taken |= {p["slot"] for p in scan.problems if p["head"] == self.head and p["status"] != "unpublished"}
        free = next((i for i in range(self.sb.slots) if i not in taken), None)
        if free is None:
            raise StoreFull(f"manifest full: head {self.head} has used all {self.sb.slots} slots; run `tbagent store gc`")
        seq = self._next_seq(scan)
        off = self.sb.slot_offset(self.head, free)
        header = REC.pack(REC_MAGIC, State.FREE, seq, kind, self.head, len(body), record_crc(seq, kind, self.head, body))
        self._write(off + REC.size, body + bytes(SLOT - REC.size - len(body)))
        self._write(off, header)
        self.cache.publish_u32(off + STATE_OFFSET, State.PUBLISHED)  # the publication point
        return Record(self.head, free, seq, kind, payload)

    def _stored_seq(self) -> int | None:
        """This head's persisted high-water mark, or None where there is none (a version 1 store,
        or a damaged line)."""
        seq, crc = HWM.unpack(self._read(self.sb.hwm_offset(self.head), HWM.size))
        return seq if seq <= MAX_SEQ and crc == hwm_crc(self.sb.uuid, self.head, seq) else None

    def _next_seq(self, scan: Scan) -> int:
        """A sequence number this head has never used: records are found by (head, seq), and
        other heads' delete records (and nodes' snapshot copies) outlive the records they name."""
        stored = self._stored_seq()
        floor = max(stored or 0, scan.seqs.get(self.head, 0))
        if stored is None:  # no mark yet: delete records elsewhere remember numbers we reclaimed
            floor = max([floor, *(int(r.payload["seq"]) for r in scan.records
                                  if r.kind is Kind.DELETE and r.payload["head"] == self.head)])
        if floor >= MAX_SEQ:
            raise StoreError(f"head {self.head} has used up its sequence numbers")
        seq = floor + 1
        # Persisted (written and flushed) before any record carries it, so a crash between
        # the two only skips a number.
        self._write(self.sb.hwm_offset(self.head), HWM.pack(seq, hwm_crc(self.sb.uuid, self.head, seq)))
        return seq

    def publish(self, name: str, blobs: Sequence[Blob], meta: JsonObject | None = None) -> Record:
        """Publish a template of several blobs; a blob is bytes or a sequence of chunks (written
        one after the other, so a large snapshot is never copied into one buffer)."""
        try:
            schema.check_name(name)
        except schema.RecordError as exc:
            raise StoreError(str(exc)) from None
        parts = [[b] if isinstance(b, bytes | bytearray | memoryview) else list(b) for b in blobs]
        with self._locked():
            scan = self.scan()
            if any(r.name == name for r in self._live(scan)[0]):
                raise StoreError(f"a template named {name!r} already exists")
            offsets = self._allocate(scan, [sum(len(c) for c in chunks) for chunks in parts])
            extents = []
            for off, chunks in zip(offsets, parts, strict=True):
                pos, crc = off, 0
                for chunk in chunks:
                    self._write(pos, chunk)  # data first, flushed, before the record exists
                    crc = zlib.crc32(chunk, crc)
                    pos += len(chunk)
                extents.append({"off": off, "len": pos - off, "crc": crc})
            return self._append(scan, Kind.TEMPLATE, {"name": name, "extents": extents, "meta": meta or {}})

    def read_extent(self, extent: dict[str, int], verify: bool = True) -> bytes:
        try:
            extent = schema.extent(extent, self.sb.data_area())
        except schema.RecordError as exc:
            raise StoreError(str(exc)) from None
        data = self._read(extent["off"], extent["len"])
        if verify and zlib.crc32(data) != extent["crc"]:
            raise StoreError(f"extent at {extent['off']:#x} fails its checksum")
        return data

    def delete(self, name: str) -> Record:
        with self._locked():
            scan = self.scan()
            target = next((r for r in self._live(scan)[0] if r.name == name), None)
            if target is None:
                raise StoreError(f"no template named {name!r}")
            return self._append(scan, Kind.DELETE, {"name": name, "head": target.head, "seq": target.seq})

    def gc(self) -> dict[str, int]:
        """Reclaim this head's deleted templates (their extents become free) and its spent
        delete records, plus slots left unpublished by a writer that died."""
        with self._locked():
            scan = self.scan()
            _, deleted = self._live(scan)
            templates = {(r.head, r.seq) for r in scan.records if r.kind is Kind.TEMPLATE}
            reclaimed = freed = abandoned = 0
            for r in scan.records:
                if r.head != self.head:
                    continue
                spent_delete = r.kind is Kind.DELETE and (r.payload["head"], r.payload["seq"]) not in templates
                if (r.kind is Kind.TEMPLATE and (r.head, r.seq) in deleted) or spent_delete:
                    self.cache.publish_u32(self.sb.slot_offset(self.head, r.slot) + STATE_OFFSET, State.RECLAIMED)
                    reclaimed += 1
                    freed += sum(_round(e["len"]) for e in r.extents)
            for p in scan.problems:
                if p["head"] == self.head and p["status"] == "unpublished":
                    # Marked reclaimed rather than zeroed: the header keeps its sequence number.
                    self.cache.publish_u32(self.sb.slot_offset(self.head, p["slot"]) + STATE_OFFSET, State.RECLAIMED)
                    abandoned += 1
            return {"reclaimed_records": reclaimed, "freed_bytes": freed, "abandoned_slots": abandoned}

    def check(self) -> JsonObject:
        scan = self.scan()
        live, _ = self._live(scan)
        problems = list(scan.problems)
        seen: list[tuple[int, int, str]] = []
        for r in live:
            for e in r.extents:
                start, end = self.sb.section(r.head)
                if not (start <= e["off"] and e["off"] + e["len"] <= end and e["off"] % EXTENT_ALIGN == 0):
                    problems.append({"head": r.head, "slot": r.slot, "status": "bad-extent", "why": f"{r.name}: {e}"})
                    continue  # never read where a record should not point
                for a, b, other in seen:
                    if e["off"] < b and a < e["off"] + e["len"]:
                        problems.append({"head": r.head, "slot": r.slot, "status": "overlap",
                                         "why": f"{r.name} overlaps {other}"})
                seen.append((e["off"], e["off"] + e["len"], r.name))
                if zlib.crc32(self._read(e["off"], e["len"])) != e["crc"]:
                    problems.append({"head": r.head, "slot": r.slot, "status": "bad-data", "why": f"{r.name}: extent crc"})
        return {"templates": len(live), "records": len(scan.records), "heads": self.sb.nheads,
                "problems": problems, "ok": not problems}


def _round(n: int) -> int:
    return max(EXTENT_ALIGN, -(-n // EXTENT_ALIGN) * EXTENT_ALIGN)


def _device_size(path: str, fd: int) -> int:
    real = os.path.realpath(path)
    sysfs = Path(f"/sys/bus/dax/devices/{Path(real).name}/size")
    if real.startswith("/dev/dax") and sysfs.exists():
        return int(sysfs.read_text())
    return os.fstat(fd).st_size
