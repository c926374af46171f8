"""A deterministic newc cpio writer for the initramfs (mtime 0, fixed owners)."""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    data: bytes = b""


def _header(ino: int, entry: Entry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = [ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, 0, 0, len(name), 0]
    hdr = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name
    return hdr + b"\0" * (-len(hdr) % 4)


def newc(entries: Iterable[Entry]) -> bytes:
    out = io.BytesIO()
    ino = 1
    for entry in entries:
        out.write(_header(ino, entry))
        out.write(entry.data + b"\0" * (-len(entry.data) % 4))
        ino += 1
    out.write(_header(0, Entry("TRAILER!!!", 0)))
    return out.getvalue()


def gzip_newc(entries: Iterable[Entry]) -> bytes:
    return gzip.compress(newc(entries), compresslevel=6, mtime=0)


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())
