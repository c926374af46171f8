"""On-memory layout of the template store. All integers little-endian.

  offset 0            superblock (one 4 KiB page)
  manifest_off        nheads x slots x SLOT bytes: head h owns slots [h*slots, (h+1)*slots)
  data_off            nheads sections of section_size bytes: head h allocates only in its own

A record slot: header then a JSON payload. `state` is the last thing written (the
publication point); the checksum covers every other header field and the payload."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"CXLTBST1"
VERSION = 1
PAGE = 4096
SLOT = 4096
DATA_ALIGN = 2 << 20  # device-dax maps in 2 MiB units
EXTENT_ALIGN = PAGE  # template areas must be page aligned

SB = struct.Struct("<8sIIIIIIQQQQ16sI")  # magic ver page nheads slots slot pad size man data sect uuid crc
REC = struct.Struct("<IIQIIII")  # magic state seq kind head payload_len crc
REC_MAGIC = 0x31435254  # "TRC1"
STATE_OFFSET = 4  # byte offset of `state` in a record: the publication flag


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
        if ver != VERSION or page != PAGE or slot != SLOT:
            raise ValueError(f"unsupported store version {ver} (page {page}, slot {slot})")
        return cls(nheads, slots, size, man, data, sect, uuid)

    @classmethod
    def geometry(cls, size: int, nheads: int, slots: int, uuid: bytes) -> Superblock:
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


def record_crc(seq: int, kind: int, head: int, payload: bytes) -> int:
    return zlib.crc32(struct.pack("<QIII", seq, kind, head, len(payload)) + payload)
