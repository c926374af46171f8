"""heap: a synthetic heap of HEAP_MIB MiB (default 64, at most 1024) read and written page by page.

Initialisation: allocates the heap (numpy, one array of 4 KiB pages of 512 uint64 words) and fills
every page with deterministic, non-zero, page-distinct content: word 0 is HEADER | page index, the
other words a repeating pattern drawn from HEAP_SEED (default 1). Every page is written, so all are
resident after init.
Per request: event "touch_pct" (0..100, default 100) of the pages, chosen by event "seed" (default 0),
are read in full and summed (uint64, wrapping) into "checksum"; of those, the first "write_ratio"
(0.0..1.0, default 0.0) share are then written: word 1 of each gets WRITE_DELTA added.
The checksum is taken before the writes, so a request's result depends only on the heap's content
before it: a cold start and a restored instance answer a request sequence identically, and a later
request's checksum rises by WRITE_DELTA for every earlier write to a page it reads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

MAX_MIB = 1024
PAGE = 4096
WORDS = PAGE // 8
HEADER = 0x5442_4845_0000_0000  # "TBHE": word 0 of page p is HEADER | p
WRITE_DELTA = 0x9E37_79B9_7F4A_7C15
MASK = (1 << 64) - 1
CHUNK = 1024  # pages gathered and summed at a time (4 MiB), so no heap-sized temporaries


def _size_mib() -> int:
    mib = int(os.environ.get("HEAP_MIB", "64"))
    if not 1 <= mib <= MAX_MIB:
        raise ValueError(f"HEAP_MIB={mib}: the heap must be 1..{MAX_MIB} MiB")
    return mib


def build(mib: int, seed: int) -> npt.NDArray[np.uint64]:
    pages = mib * (1 << 20) // PAGE
    heap = np.empty((pages, WORDS), dtype=np.uint64)
    heap[:] = np.random.default_rng(seed).integers(1, 1 << 63, WORDS, dtype=np.uint64)  # touches every page
    heap[:, 0] = np.uint64(HEADER) | np.arange(pages, dtype=np.uint64)
    return heap


HEAP_MIB = _size_mib()
HEAP = build(HEAP_MIB, int(os.environ.get("HEAP_SEED", "1")))


def handle(event: JsonObject) -> JsonObject:
    touch_pct = float(event.get("touch_pct", 100))
    write_ratio = float(event.get("write_ratio", 0.0))
    if not 0.0 <= touch_pct <= 100.0 or not 0.0 <= write_ratio <= 1.0:
        raise ValueError("touch_pct must be in 0..100 and write_ratio in 0.0..1.0")
    pages = HEAP.shape[0]
    touched = round(pages * touch_pct / 100)
    written = round(touched * write_ratio)
    order = np.random.default_rng(int(event.get("seed", 0))).permutation(pages)[:touched]
    buf = np.empty((min(CHUNK, max(touched, 1)), WORDS), dtype=np.uint64)
    total = 0
    for i in range(0, touched, CHUNK):
        part = order[i:i + CHUNK]
        got = np.take(HEAP, part, axis=0, out=buf[:len(part)], mode="clip")  # clip: unbuffered, indices are valid
        total = (total + int(got.sum(dtype=np.uint64))) & MASK  # sums wrap modulo 2**64
    HEAP[order[:written], 1] += np.uint64(WRITE_DELTA)  # distinct pages: one write each
    return {"heap_mib": HEAP_MIB, "pages": pages, "touched": touched, "written": written,
            "checksum": f"{total:016x}"}
