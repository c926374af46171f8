"""inference: a small model inference (an MLP classifier's forward pass, numpy, float32).

Initialisation: imports numpy and builds a deterministic 784-256-64-10 MLP (He-initialised float32
weights from a fixed seed, about 0.9 MB resident).
Per request: generates event "batch" (default 32, at most 4096) inputs from event "seed" (default 0),
runs the forward pass (ReLU, ReLU, softmax) and returns the predicted classes and a rounded
checksum of the probabilities (weighted by class number, so it is not just the batch size).
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

LAYERS = (784, 256, 64, 10)
SEED = 7
MAX_BATCH = 4096

Array = npt.NDArray[np.float32]


def build(sizes: tuple[int, ...] = LAYERS, seed: int = SEED) -> list[tuple[Array, Array]]:
    rng = np.random.default_rng(seed)
    model = []
    for n_in, n_out in pairwise(sizes):
        w = rng.standard_normal((n_in, n_out), dtype=np.float32) * np.float32(np.sqrt(2.0 / n_in))
        b = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.01)
        model.append((w, b))
    return model


def batch(n: int, seed: int) -> Array:
    """n inputs of LAYERS[0] values in [0, 1), like normalised 28x28 grey images."""
    return np.random.default_rng(seed).random((n, LAYERS[0]), dtype=np.float32)


def forward(x: Array) -> Array:
    for i, (w, b) in enumerate(MODEL):
        x = x @ w + b
        if i < len(MODEL) - 1:
            x = np.maximum(x, np.float32(0))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    probs: Array = e / e.sum(axis=1, keepdims=True)
    return probs


MODEL = build()


def handle(event: JsonObject) -> JsonObject:
    n = int(event.get("batch", 32))
    if not 1 <= n <= MAX_BATCH:
        raise ValueError(f"batch must be 1..{MAX_BATCH}, not {n}")
    probs = forward(batch(n, int(event.get("seed", 0))))
    weights = np.arange(1, LAYERS[-1] + 1, dtype=np.float64)
    return {"batch": n, "classes": [int(c) for c in probs.argmax(axis=1)],
            "checksum": round(float((probs.astype(np.float64) * weights).sum()), 4)}
