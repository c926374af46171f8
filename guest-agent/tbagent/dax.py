"""Byte access to a device-dax device (the node's view of a CXL multi-headed device)."""

from __future__ import annotations

import argparse
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbagent.commands import Subcommands

# device-dax only maps whole, aligned units (2 MiB by default) with MAP_SHARED.
ALIGN = 2 << 20


def device_size(path: str) -> int:
    dev = Path(os.path.realpath(path)).name
    return int(Path(f"/sys/bus/dax/devices/{dev}/size").read_text())


def _window(path: str, offset: int, length: int) -> tuple[int, int, int]:
    size = device_size(path)
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"range {offset}+{length} is outside {path} ({size} bytes)")
    start = offset - offset % ALIGN
    end = -(-(offset + length) // ALIGN) * ALIGN
    return start, end - start, offset - start


def write(path: str, offset: int, data: bytes) -> None:
    start, span, skip = _window(path, offset, len(data))
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, span, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start) as m:
            m[skip : skip + len(data)] = data
    finally:
        os.close(fd)


def read(path: str, offset: int, length: int) -> bytes:
    start, span, skip = _window(path, offset, length)
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, span, mmap.MAP_SHARED, mmap.PROT_READ, offset=start) as m:
            return bytes(m[skip : skip + length])
    finally:
        os.close(fd)


def device_path(name: str) -> str:
    """An MHD name (/dev/mhd/NAME) or an explicit /dev path."""
    path = name if name.startswith("/") else f"/dev/mhd/{name}"
    if not os.path.exists(path):
        raise ValueError(f"no such CXL device {path}")
    return path


def _cmd_write(args: argparse.Namespace) -> int:
    write(device_path(args.device), args.offset, bytes.fromhex(args.hex))
    return 0


def _cmd_read(args: argparse.Namespace) -> int:
    print(read(device_path(args.device), args.offset, args.length).hex())
    return 0


def register(sub: Subcommands) -> None:
    dx = sub.add_parser("dax", help="raw access to a CXL device").add_subparsers(dest="op", required=True)
    w = dx.add_parser("write", help="write hex bytes at an offset")
    w.add_argument("device", help="MHD name (/dev/mhd/NAME) or a /dev/daxX.Y path")
    w.add_argument("offset", type=int)
    w.add_argument("hex")
    w.set_defaults(fn=_cmd_write)
    r = dx.add_parser("read", help="read bytes at an offset, printed as hex")
    r.add_argument("device")
    r.add_argument("offset", type=int)
    r.add_argument("length", type=int)
    r.set_defaults(fn=_cmd_read)
