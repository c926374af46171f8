"""On-memory layout of the template store. All integers little-endian.

  offset 0            superblock (one 4 KiB page); from HWM_OFF, one 64-byte line per head
                      holding its sequence high-water mark (version 2)
  manifest_off        nheads x slots x SLOT bytes: head h owns slots [h*slots, (h+1)*slots)
  data_off            nheads sections of section_size bytes: head h allocates only in its own

A record slot: header then a JSON payload. `state` is the last thing written (the
publication point); the checksum covers every other header field and the payload.

Version 2 adds the high-water marks (version 1 left that part of the page unused and
unformatted): a head's sequence numbers never repeat, even once every record that carried
them has been reclaimed. Version 1 stores are still read and written; version 2 stores are
refused by version-1 agents, which would reuse sequence numbers."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"CXLTBST1"
VERSION = 2
READABLE_VERSIONS = (1, 2)
PAGE = 4096
SLOT = 4096
DATA_ALIGN = 2 << 20  # device-dax maps in 2 MiB units
EXTENT_ALIGN = PAGE  # template areas must be page aligned

SB = struct.Struct("<8sIIIIIIQQQQ16sI")  # magic ver page nheads slots slot pad size man data sect uuid crc
REC = struct.Struct("<IIQIIII")  # magic state seq kind head payload_len crc
REC_MAGIC = 0x31435254  # "TRC1"
STATE_OFFSET = 4  # byte offset of `state` in a record: the publication flag
MAX_PAYLOAD = SLOT - REC.size
MAX_SEQ = (1 << 63) - 1  # stays a plain JSON integer in DELETE records
CACHE_LINE = 64
# Each head's mark gets its own cache line: heads are not coherent, and a line flushed by one
# head would overwrite another head's unflushed neighbour in it.
HWM_OFF = 2048
HWM = struct.Struct("<QI")  # seq crc
MAX_HEADS = (PAGE - HWM_OFF) // CACHE_LINE


class State(IntEnum):
    FREE = 0
    PUBLISHED = 0x50425550  # "PUBP"
    RECLAIMED = 0x4D434552  # "RECM"


class Kind(IntEnum):
    TEMPLATE = 1
    DELETE = 2


@dataclass(frozen=True)
class Superblock:
    nheads: int
    slots: int
    size: int
    manifest_off: int
    data_off: int
    section_size: int
    uuid: bytes
    version: int = VERSION

    def pack(self) -> bytes:
        body = SB.pack(MAGIC, VERSION, PAGE, self.nheads, self.slots, SLOT, 0, self.size, self.manifest_off,
                       self.data_off, self.section_size, self.uuid, 0)
        crc = zlib.crc32(body[:-4])
        return body[:-4] + struct.pack("<I", crc)

    @classmethod
    def unpack(cls, raw: bytes) -> Superblock:
        magic, ver, page, nheads, slots, slot, _pad, size, man, data, sect, uuid, crc = SB.unpack(raw[: SB.size])
        if magic != MAGIC:
            raise ValueError("no template store here (bad magic); run `tbagent store format`")
        if zlib.crc32(raw[: SB.size - 4]) != crc:
            raise ValueError("superblock checksum mismatch: the store is corrupt")
        if ver not in READABLE_VERSIONS or page != PAGE or slot != SLOT:
            raise ValueError(f"unsupported store version {ver} (page {page}, slot {slot})")
        sb = cls(nheads, slots, size, man, data, sect, uuid, ver)
        sb.check_geometry()
        return sb

    def check_geometry(self) -> None:
        """A checksum only proves that some head wrote the superblock: bound every offset the
        other code will compute from it, so a bad one cannot send a scan or a flush astray."""
        if not 1 <= self.nheads <= MAX_HEADS or self.slots < 1:
            raise ValueError(f"superblock geometry out of range: {self.nheads} heads, {self.slots} slots")
        if self.manifest_off != PAGE or self.data_off < PAGE + self.nheads * self.slots * SLOT:
            raise ValueError("superblock geometry out of range: the manifest overlaps the superblock or the data")
        if self.data_off % DATA_ALIGN or self.section_size < DATA_ALIGN or self.section_size % DATA_ALIGN \
                or self.data_off + self.nheads * self.section_size > self.size:
            raise ValueError("superblock geometry out of range: the data sections do not fit the device")

    @classmethod
    def geometry(cls, size: int, nheads: int, slots: int, uuid: bytes) -> Superblock:
        if not 1 <= nheads <= MAX_HEADS or slots < 1:
            raise ValueError(f"a store has 1 to {MAX_HEADS} heads and at least one slot each")
        man = PAGE
        data = -(-(man + nheads * slots * SLOT) // DATA_ALIGN) * DATA_ALIGN
        section = (size - data) // nheads // DATA_ALIGN * DATA_ALIGN
        if section < DATA_ALIGN:
            raise ValueError(f"device of {size} bytes is too small for {nheads} heads and {slots} slots each")
        return cls(nheads, slots, size, man, data, section, uuid)

    def slot_offset(self, head: int, index: int) -> int:
        return self.manifest_off + (head * self.slots + index) * SLOT

    def section(self, head: int) -> tuple[int, int]:
        start = self.data_off + head * self.section_size
        return start, start + self.section_size

    def data_area(self) -> tuple[int, int]:
        return self.data_off, self.data_off + self.nheads * self.section_size

    def hwm_offset(self, head: int) -> int:
        return HWM_OFF + head * CACHE_LINE


def hwm_crc(uuid: bytes, head: int, seq: int) -> int:
    """The store's uuid is in the checksum so a mark left by an earlier format does not count."""
    return zlib.crc32(b"HWM" + uuid + struct.pack("<IQ", head, seq))


def record_crc(seq: int, kind: int, head: int, payload: bytes) -> int:
    return zlib.crc32(struct.pack("<QIII", seq, kind, head, len(payload)) + payload)
