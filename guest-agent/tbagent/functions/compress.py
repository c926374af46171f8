"""compress: a compression job (zlib or lzma) with a decompression check.

Initialisation: generates a deterministic 4 MiB corpus of compressible pseudo-text (words from a
fixed list, Zipf-weighted, drawn by a seeded random.Random) and keeps it as bytes.
Per request: compresses the first event "kib" KiB (default 1024, at most 4096) with event "algo"
("zlib", the default, or "lzma") at event "level" (default 6; zlib 0..9, lzma presets 0..6, as 7..9
need 186..674 MiB of compressor memory), decompresses, checks the round trip and returns the
sizes, the ratio and the crc32 of the input.
"""

from __future__ import annotations

import lzma
import random
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

CORPUS_KIB = 4096
SEED = 2024
WORDS = ("the of and to in is was for on that with as by at from it his an were are which this be "
         "memory page fault tier cxl numa node socket latency bandwidth sandbox function snapshot restore "
         "cold warm start kernel guest host device region heap stack cache line migrate promote demote "
         "lazy copy write read hot idle pool layer image").split()


def build(kib: int = CORPUS_KIB, seed: int = SEED) -> bytes:
    rnd = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    size = kib << 10
    out = bytearray()
    while len(out) < size:  # sentences of 12 words
        tokens = rnd.choices(WORDS, weights, k=12 << 10)
        out += "".join(" ".join(tokens[i:i + 12]).capitalize() + ".\n" for i in range(0, len(tokens), 12)).encode()
    return bytes(out[:size])


CORPUS = build()


def handle(event: JsonObject) -> JsonObject:
    kib = int(event.get("kib", 1024))
    algo = str(event.get("algo", "zlib"))
    level = int(event.get("level", 6))
    if not 1 <= kib <= CORPUS_KIB:
        raise ValueError(f"kib must be 1..{CORPUS_KIB}, not {kib}")
    data = CORPUS[:kib << 10]
    if algo == "zlib" and 0 <= level <= 9:
        packed = zlib.compress(data, level)
        back = zlib.decompress(packed)
    elif algo == "lzma" and 0 <= level <= 6:
        packed = lzma.compress(data, preset=level)
        back = lzma.decompress(packed)
    else:
        raise ValueError(f"algo {algo!r} level {level}: use zlib with level 0..9 or lzma with level 0..6")
    if back != data:
        raise RuntimeError(f"{algo} round trip changed the data")
    return {"algo": algo, "level": level, "in_bytes": len(data), "out_bytes": len(packed),
            "ratio": round(len(data) / len(packed), 3), "crc32": f"{zlib.crc32(data):08x}", "round_trip": True}
