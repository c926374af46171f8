"""imgresize: a Pillow image resize (FunctionBench's image processing, without the storage).

Initialisation: imports Pillow and builds a deterministic 1024x768 RGB image in memory (colour
gradients, a checker pattern and seeded numpy noise, so resampling has real detail to work on).
Per request: resizes it to event "w" x "h" (default 320x240, each 1..4096) with LANCZOS and returns
the size and the first 16 hex digits of the sha256 of the resized pixels.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

WIDTH, HEIGHT, SEED = 1024, 768, 42
MAX_SIDE = 4096


def build(width: int = WIDTH, height: int = HEIGHT, seed: int = SEED) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 48, (height, width, 3))
    rgb = np.stack([x * 255 // width, y * 255 // height, ((x // 32 + y // 32) % 2) * 160 + (x ^ y) % 64], axis=-1)
    return Image.fromarray(((rgb + noise) % 256).astype(np.uint8))  # (h, w, 3) uint8: mode RGB


IMAGE = build()


def handle(event: JsonObject) -> JsonObject:
    w, h = int(event.get("w", 320)), int(event.get("h", 240))
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise ValueError(f"w and h must be 1..{MAX_SIDE}, not {w}x{h}")
    out = IMAGE.resize((w, h), Image.Resampling.LANCZOS)
    return {"w": out.width, "h": out.height, "mode": out.mode,
            "sha256": hashlib.sha256(out.tobytes()).hexdigest()[:16]}
