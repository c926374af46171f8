"""ctypes binding of libcxlcache (guest-agent/native/cxlcache.c, built by the image pipeline),
and the seam the store reaches memory through: `attach` gives it a mapping and the cache
control for it. Tests attach a non-coherent fake there (tests/unit/noncoherent.py), because a
plain file, like QEMU's shared backing, is coherent and would hide every missing flush."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

LIB_PATHS: tuple[str, ...] = (os.environ.get("CXLTB_CACHE_LIB", ""), "/usr/lib/cxltb/libcxlcache.so")


class Mapping(Protocol):
    """Byte-addressed device memory, as the store uses it (slices only)."""

    def __getitem__(self, key: slice, /) -> bytes: ...

    def __setitem__(self, key: slice, value: bytes | bytearray | memoryview, /) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class CacheOps(Protocol):
    def flush(self, off: int, length: int) -> None:
        """Write [off, off+length) back to memory so other heads can see it."""

    def invalidate(self, off: int, length: int) -> None:
        """Drop cached copies of [off, off+length) so the next loads come from memory."""

    def publish_u32(self, off: int, value: int) -> None:
        """Store a 4-byte flag with one store and flush it: the publication point."""

    def close(self) -> None: ...


Attach = Callable[[int, int], tuple[Mapping, CacheOps]]


class CacheCtl:
    def __init__(self, buf: mmap.mmap) -> None:
        path = next((p for p in LIB_PATHS if p and Path(p).exists()), None)
        if path is None:
            raise OSError("libcxlcache.so not found (set CXLTB_CACHE_LIB or rebuild the guest image)")
        self.lib = ctypes.CDLL(path)
        for fn in (self.lib.cxl_flush, self.lib.cxl_invalidate):
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            fn.restype = None
        self.lib.cxl_publish_u32.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.lib.cxl_publish_u32.restype = None
        self.buf = buf
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def _span(self, off: int, length: int) -> None:
        # clflush on an address outside the mapping faults the whole process: refuse here too,
        # whatever the caller checked.
        if not 0 <= off <= len(self.buf) or not 0 <= length <= len(self.buf) - off:
            raise ValueError(f"cache range {off:#x}+{length:#x} lies outside the {len(self.buf):#x}-byte mapping")

    def flush(self, off: int, length: int) -> None:
        self._span(off, length)
        self.lib.cxl_flush(self.base + off, length)

    def invalidate(self, off: int, length: int) -> None:
        self._span(off, length)
        self.lib.cxl_invalidate(self.base + off, length)

    def publish_u32(self, off: int, value: int) -> None:
        if off % 4:
            raise ValueError("publication flag must be 4-byte aligned")
        self._span(off, 4)
        self.lib.cxl_publish_u32(self.base + off, value)

    def close(self) -> None:
        self.base = 0


def attach(fd: int, size: int) -> tuple[Mapping, CacheOps]:
    """The real thing: a shared mapping of the device and libcxlcache on it."""
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        return mm, CacheCtl(mm)
    except BaseException:
        mm.close()
        raise
