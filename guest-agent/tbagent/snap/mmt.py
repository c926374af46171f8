"""The mm-template uAPI (kernel-patches/README.md) from Python: register, info, remove.

Layouts are those of include/uapi/linux/mm_template.h (checked against the C header's sizeof
in the unit tests through the selftests' copy of the header)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import struct
from dataclasses import asdict, dataclass, replace

DEVICE = "/dev/mm_template"
NAME_MAX = 64
NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,63}$")

AREA = struct.Struct("<QQQII")                     # addr len offset prot flags
REGISTER = struct.Struct("<IIiIQ64sII32x")         # size flags dax_fd nr_areas areas name id rsv0 rsv[4]
INFO = struct.Struct("<II64sQIIII6Q32x")           # size flags name areas cap id nr_areas rsv0 dev_size..cow rsv[4]
REMOVE = struct.Struct("<II64s16x")


def _iowr(nr: int, size: int, write_only: bool = False) -> int:
    direction = 1 if write_only else 3  # _IOC_WRITE, or _IOC_READ | _IOC_WRITE
    return (direction << 30) | (size << 16) | (0xB9 << 8) | nr


IOC_REGISTER = _iowr(0, REGISTER.size)
IOC_REMOVE = _iowr(3, REMOVE.size, write_only=True)
IOC_INFO = _iowr(4, INFO.size)


@dataclass(frozen=True)
class Area:
    """A template area: `len` bytes at `addr`, `off` bytes into the template's memory: into the
    snapshot's memory blob as planned (snap.images), into the device-dax device once `at(base)`
    placed it (what MMT_IOC_REGISTER takes)."""

    addr: int
    len: int
    off: int
    prot: int
    flags: int = 0  # the pagemap flags of the pages (PE_PRESENT, PE_LAZY)

    def at(self, base: int) -> Area:
        return replace(self, off=base + self.off)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Info:
    name: str
    id: int
    nr_areas: int
    dev_size: int
    total_len: int
    nr_vmas: int
    nr_attach: int
    shared_maps: int
    cow_copies: int


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"bad mm-template name {name!r}: 1-63 characters of [A-Za-z0-9._:-]")
    return name


def _ioctl(req: int, buf: bytearray) -> None:
    fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, req, buf)
    finally:
        os.close(fd)


def register(name: str, dax: str, areas: list[Area]) -> int:
    """Register `name`; returns its id. An existing template of that name raises FileExistsError."""
    check_name(name)
    table = ctypes.create_string_buffer(b"".join(AREA.pack(a.addr, a.len, a.off, a.prot, 0)
                                                 for a in sorted(areas, key=lambda a: a.addr)))
    dax_fd = os.open(dax, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(REGISTER.pack(REGISTER.size, 0, dax_fd, len(areas), ctypes.addressof(table),
                                      name.encode(), 0, 0))
        _ioctl(IOC_REGISTER, buf)
    finally:
        os.close(dax_fd)
    return int(REGISTER.unpack(buf)[6])


def info(name: str) -> Info:
    buf = bytearray(INFO.pack(INFO.size, 0, check_name(name).encode(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    _ioctl(IOC_INFO, buf)
    f = INFO.unpack(buf)
    return Info(name, f[5], f[6], *f[8:14])


def remove(name: str) -> None:
    _ioctl(IOC_REMOVE, bytearray(REMOVE.pack(REMOVE.size, 0, check_name(name).encode())))


def ensure(name: str, dax: str, areas: list[Area]) -> bool:
    """Register unless a template of this name is already there; True if this call registered it.
    Names carry the store record's head and sequence number, so an existing one is this record."""
    try:
        register(name, dax, areas)
        return True
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise OSError(exc.errno, f"MMT_IOC_REGISTER {name}: {exc.strerror}") from None
        return False
