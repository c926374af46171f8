"""ctypes binding of libcxlcache (guest-agent/native/cxlcache.c, built by the image pipeline)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

LIB_PATHS: tuple[str, ...] = (os.environ.get("CXLTB_CACHE_LIB", ""), "/usr/lib/cxltb/libcxlcache.so")


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
