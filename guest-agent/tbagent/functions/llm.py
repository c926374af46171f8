"""llm: a decoder-only transformer language model in numpy (greedy decoding, byte-level tokens).

Initialisation: builds the model of preset LLM_PRESET (default "ci") with weights stored as
LLM_DTYPE (default "float32", or "float16"), drawn deterministically from LLM_SEED (default 0).
Per request: event "prompt" (text, at most MAX_PROMPT_CHARS) is encoded as bytes after a BOS
token, and "max_tokens" (default 16, 1..MAX_TOKENS, and the context must fit max_ctx) tokens are
generated greedily; returns the tokens, their text and timings (prefill, time to first token,
the time of each token).

The model: pre-norm blocks of RMSNorm, multi-head attention with rotary positions (RoPE, the
rotate-half form, base 10000) over a KV cache, and a SwiGLU MLP (silu(x Wg) * (x Wu)) Wd; a final
RMSNorm; tied embeddings (the logits are x @ embed.T: there is no output matrix). Matrices are
[in, out]. Computation is float32; float16 weights are upcast one matrix at a time, when used,
so a model mapped read-only from shared memory is never copied whole.

Only the standard library and numpy: this file is copied alone as a sandbox's handler.py.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

F32 = npt.NDArray[np.float32]
BOS = 256  # the one special token; bytes are 0..255
MIN_VOCAB = 257
ROPE_BASE = 10000.0
EPS = 1e-5
MAX_TOKENS = 4096
MAX_PROMPT_CHARS = 65536
KV_FORMAT = "tb-llm-kv/1"


class DType(StrEnum):
    FLOAT16 = "float16"
    FLOAT32 = "float32"


def _int_in(label: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{label} must be an integer, not {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{label}={value} is out of range {lo}..{hi}")
    return value


@dataclass(frozen=True)
class Config:
    vocab: int = MIN_VOCAB
    dim: int = 64
    layers: int = 2
    heads: int = 4
    hidden: int = 128
    max_ctx: int = 128
    dtype: DType = DType.FLOAT32
    seed: int = 0

    def __post_init__(self) -> None:
        _int_in("llm config: vocab", self.vocab, MIN_VOCAB, 1 << 20)
        _int_in("llm config: dim", self.dim, 2, 1 << 14)
        _int_in("llm config: layers", self.layers, 1, 512)
        _int_in("llm config: heads", self.heads, 1, 1024)
        _int_in("llm config: hidden", self.hidden, 1, 1 << 16)
        _int_in("llm config: max_ctx", self.max_ctx, 1, 1 << 17)
        _int_in("llm config: seed", self.seed, 0, (1 << 63) - 1)
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"llm config: dim={self.dim} must split into heads={self.heads} of an even size (for RoPE)")
        if self.dtype not in tuple(DType):
            raise ValueError(f"llm config: dtype must be one of {', '.join(DType)}, not {self.dtype!r}")
        object.__setattr__(self, "dtype", DType(self.dtype))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_json(self) -> JsonObject:
        return {**asdict(self), "dtype": str(self.dtype)}

    @classmethod
    def from_json(cls, data: object) -> Config:
        """A Config from untrusted JSON: exactly the known keys, integers in range, a known dtype."""
        if not isinstance(data, dict):
            raise ValueError(f"llm config: expected a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        if set(data) != known:
            missing, extra = sorted(known - set(data)), sorted(str(k) for k in set(data) - known)
            raise ValueError(f"llm config: missing keys {missing}, unknown keys {extra}")
        if data["dtype"] not in {d.value for d in DType}:
            raise ValueError(f"llm config: dtype must be one of {', '.join(DType)}, not {data['dtype']!r}")
        return cls(**{**data, "dtype": DType(data["dtype"])})


# ci: ~3.3M parameters, fast under slow emulation; small ~26M; base ~113M (453 MB as float32).
PRESETS: dict[str, Config] = {
    "tiny": Config(dim=32, layers=2, heads=4, hidden=64, max_ctx=64),
    "ci": Config(dim=256, layers=4, heads=4, hidden=704, max_ctx=512),
    "small": Config(dim=512, layers=8, heads=8, hidden=1408, max_ctx=1024),
    "base": Config(dim=768, layers=12, heads=12, hidden=3072, max_ctx=1024),
}


def tensor_specs(cfg: Config) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor's name -> (shape, dtype), sorted by name, without making any data."""
    d, h = cfg.dim, cfg.hidden
    shapes: dict[str, tuple[int, ...]] = {"embed": (cfg.vocab, d), "norm": (d,)}
    for i in range(cfg.layers):
        p = f"layer{i:03d}."
        shapes |= {p + "attn_norm": (d,), p + "wq": (d, d), p + "wk": (d, d), p + "wv": (d, d), p + "wo": (d, d),
                   p + "mlp_norm": (d,), p + "w_gate": (d, h), p + "w_up": (d, h), p + "w_down": (h, d)}
    return {name: (shapes[name], str(cfg.dtype)) for name in sorted(shapes)}


def param_count(cfg: Config) -> int:
    return sum(int(np.prod(shape)) for shape, _ in tensor_specs(cfg).values())


def tensors(cfg: Config) -> dict[str, np.ndarray]:
    """The weights, drawn from cfg.seed and each tensor's name (so one tensor does not depend on
    the others), in cfg.dtype. Norm gains are 1 + noise so that a missing gain shows in tests."""
    out: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in tensor_specs(cfg).items():
        rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
        w = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) == 1:
            w = np.float32(0.1) * w + np.float32(1.0)
        elif name == "embed":
            w *= np.float32(0.5 / np.sqrt(cfg.dim))  # logits of a unit-RMS state have a std near 0.5
        else:
            w *= np.float32(1.0 / np.sqrt(shape[0]))
        out[name] = w.astype(dtype, copy=False)
    return out


def encode(text: str) -> list[int]:
    """BOS, then the UTF-8 bytes of text."""
    return [BOS, *text.encode()]


def decode(tokens: Sequence[int]) -> str:
    """The text of the byte tokens (specials dropped; invalid UTF-8 replaced)."""
    return bytes(t for t in tokens if 0 <= t < 256).decode(errors="replace")


def _as_f32_buffer(buf: Any, count: int, what: str) -> F32:
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.nbytes != count * 4:
        raise ValueError(f"llm KV cache: {what} has {arr.nbytes} bytes, expected {count * 4}")
    return arr.view("<f4")


class KVCache:
    """Keys and values per layer and head. A fresh cache's `k` and `v` are float32 arrays
    [layers, heads, max_ctx, head_dim] filled to `length`. A restored cache also has a `past`
    (past_k, past_v: [layers, heads, past_len, head_dim]), possibly read-only views of a buffer in
    shared memory, which are never copied or written: new positions go into a fresh local tail (k, v
    of max_ctx - past_len positions; np.zeros, so untouched pages cost nothing) and attention reads
    the past and the tail side by side. Copy-on-first-write would copy the whole past, the cost a
    hand-over in place exists to avoid, and would leave the shared pages read-only for other heads."""

    def __init__(self, cfg: Config, past_k: F32 | None = None, past_v: F32 | None = None) -> None:
        self.cfg = cfg
        empty = np.zeros((cfg.layers, cfg.heads, 0, cfg.head_dim), dtype=np.float32)
        self.past_k: F32 = empty if past_k is None else past_k
        self.past_v: F32 = empty if past_v is None else past_v
        self.past_len = int(self.past_k.shape[2])
        tail = (cfg.layers, cfg.heads, cfg.max_ctx - self.past_len, cfg.head_dim)
        self.k: F32 = np.zeros(tail, dtype=np.float32)
        self.v: F32 = np.zeros(tail, dtype=np.float32)
        self.tail_len = 0

    @property
    def length(self) -> int:
        return self.past_len + self.tail_len

    def nbytes_used(self) -> int:
        return 2 * self.cfg.layers * self.cfg.heads * self.length * self.cfg.head_dim * 4

    def export(self) -> tuple[bytes, list[memoryview], list[memoryview]]:
        """(header, k chunks, v chunks) with no copy: the chunks, one after the other, are the used
        keys (values) as float32 [layers, heads, length, head_dim], the layout restore() wraps; the
        header (JSON) holds the format, config, length and each part's CRC-32. The chunks can be
        given to Store.publish as blobs or sent with socket.sendmsg."""
        k_chunks: list[memoryview] = []
        v_chunks: list[memoryview] = []
        for layer in range(self.cfg.layers):
            for head in range(self.cfg.heads):
                for past, tail, chunks in ((self.past_k, self.k, k_chunks), (self.past_v, self.v, v_chunks)):
                    if self.past_len:
                        chunks.append(past[layer, head].data.cast("B"))
                    if self.tail_len:
                        chunks.append(tail[layer, head, :self.tail_len].data.cast("B"))
        k_crc = v_crc = 0
        for c in k_chunks:
            k_crc = zlib.crc32(c, k_crc)
        for c in v_chunks:
            v_crc = zlib.crc32(c, v_crc)
        header = {"format": KV_FORMAT, "config": self.cfg.to_json(), "length": self.length, "k_crc32": k_crc, "v_crc32": v_crc}
        return json.dumps(header, sort_keys=True).encode(), k_chunks, v_chunks

    @classmethod
    def restore(cls, cfg: Config, length: int, k_buf: Any, v_buf: Any, crc32: tuple[int, int] | None = None) -> KVCache:
        """A cache whose first `length` positions are k_buf and v_buf (float32 [layers, heads,
        length, head_dim], as export() writes them), wrapped without a copy: a read-only buffer stays
        read-only. Sizes are checked, and the CRC-32s when given (they read every byte once)."""
        if not 0 <= length <= cfg.max_ctx:
            raise ValueError(f"llm KV cache: length {length} is out of range 0..{cfg.max_ctx}")
        shape = (cfg.layers, cfg.heads, length, cfg.head_dim)
        count = int(np.prod(shape))
        k, v = _as_f32_buffer(k_buf, count, "k"), _as_f32_buffer(v_buf, count, "v")
        if crc32 is not None and (zlib.crc32(k.data), zlib.crc32(v.data)) != tuple(crc32):
            raise ValueError("llm KV cache: the keys or values fail their CRC-32")
        return cls(cfg, k.reshape(shape), v.reshape(shape))

    @classmethod
    def from_export(cls, cfg: Config, header: bytes, k_buf: Any, v_buf: Any) -> KVCache:
        """restore() from export()'s untrusted header: its format and config must be cfg's, its
        checksums must match."""
        try:
            h = json.loads(header)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"llm KV cache: the header is not JSON: {exc}") from None
        if not isinstance(h, dict) or h.get("format") != KV_FORMAT:
            raise ValueError(f"llm KV cache: the header is not a {KV_FORMAT} header")
        if Config.from_json(h.get("config")) != cfg:
            raise ValueError("llm KV cache: it was made by another model config")
        length, crcs = h.get("length"), (h.get("k_crc32"), h.get("v_crc32"))
        _int_in("llm KV cache: length", length, 0, cfg.max_ctx)
        for c in crcs:
            _int_in("llm KV cache: crc32", c, 0, 0xFFFFFFFF)
        return cls.restore(cfg, length, k_buf, v_buf, crc32=crcs)  # type: ignore[arg-type]


def _rope_angles(head_dim: int, start: int, n: int) -> tuple[F32, F32]:
    """cos and sin [n, head_dim / 2] of positions start.. for rotary embedding."""
    half = head_dim // 2
    inv = ROPE_BASE ** (-np.arange(half, dtype=np.float64) / half)
    angles = np.arange(start, start + n, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rope(x: F32, cos: F32, sin: F32) -> F32:
    """Rotary positions for x [heads, T, head_dim]: pair (j, j + half) turned by angle j."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out: F32 = np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out


class Model:
    def __init__(self, cfg: Config, weights: Mapping[str, np.ndarray]) -> None:
        """Checks the names, shapes and dtypes of weights against cfg and keeps the arrays
        themselves (no copy: they may be read-only maps of shared memory)."""
        specs = tensor_specs(cfg)
        if set(weights) != set(specs):
            raise ValueError(f"llm weights: missing {sorted(set(specs) - set(weights))}, "
                             f"unknown {sorted(set(weights) - set(specs))}")
        for name, (shape, dtype) in specs.items():
            w = weights[name]
            if not isinstance(w, np.ndarray) or w.shape != shape or w.dtype != np.dtype(dtype):
                got = (getattr(w, "shape", None), str(getattr(w, "dtype", type(w).__name__)))
                raise ValueError(f"llm weights: {name} is {got}, expected ({shape}, {dtype})")
        self.cfg = cfg
        self.w: dict[str, np.ndarray] = {name: weights[name] for name in specs}  # the same array objects

    def _f32(self, name: str) -> F32:
        w = self.w[name]
        return w if w.dtype == np.float32 else w.astype(np.float32)  # float16: a transient upcast

    def _norm(self, x: F32, name: str) -> F32:
        rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(EPS))
        out: F32 = (x / rms) * self._f32(name)
        return out

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg)

    def _attend(self, layer: int, q: F32, k: F32, v: F32, cache: KVCache) -> F32:
        """Attention of q [heads, T, hd] over the past and the tail, once k and v [heads, T, hd]
        are appended to the tail; causal within the new positions."""
        t0, n = cache.tail_len, q.shape[1]
        cache.k[layer, :, t0:t0 + n] = k
        cache.v[layer, :, t0:t0 + n] = v
        tk, tv = cache.k[layer, :, :t0 + n], cache.v[layer, :, :t0 + n]
        scale = np.float32(1.0 / np.sqrt(self.cfg.head_dim))
        scores = (q @ tk.transpose(0, 2, 1)) * scale  # [heads, T, t0+T]
        rows, cols = np.triu_indices(n, 1)  # a new position sees no later one
        scores[:, rows, t0 + cols] = -np.inf
        if cache.past_len:
            past = (q @ cache.past_k[layer].transpose(0, 2, 1)) * scale
            scores = np.concatenate([past, scores], axis=-1)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out: F32 = p[..., cache.past_len:] @ tv
        if cache.past_len:
            out += p[..., :cache.past_len] @ cache.past_v[layer]
        return out

    def prefill(self, tokens: Sequence[int], cache: KVCache) -> F32:
        """Runs tokens through the model after what the cache holds, appending them to it; returns
        the logits [vocab] of the last position."""
        cfg, n = self.cfg, len(tokens)
        if n == 0:
            raise ValueError("llm: prefill needs at least one token")
        if cache.cfg != cfg:
            raise ValueError("llm: the KV cache belongs to another model config")
        if cache.length + n > cfg.max_ctx:
            raise ValueError(f"llm: context overflow: {cache.length} cached + {n} new tokens > max_ctx {cfg.max_ctx}")
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 1 or ids.min() < 0 or ids.max() >= cfg.vocab:
            raise ValueError(f"llm: tokens must be integers in 0..{cfg.vocab - 1}")
        x: F32 = self.w["embed"][ids].astype(np.float32)  # [T, dim]: only these rows are read
        cos, sin = _rope_angles(cfg.head_dim, cache.length, n)
        hs, hd = cfg.heads, cfg.head_dim
        for i in range(cfg.layers):
            p = f"layer{i:03d}."
            h = self._norm(x, p + "attn_norm")
            q, k, v = ((h @ self._f32(p + m)).reshape(n, hs, hd).transpose(1, 0, 2) for m in ("wq", "wk", "wv"))
            att = self._attend(i, _rope(q, cos, sin), _rope(k, cos, sin), v, cache)
            x = x + att.transpose(1, 0, 2).reshape(n, cfg.dim) @ self._f32(p + "wo")
            h = self._norm(x, p + "mlp_norm")
            g = h @ self._f32(p + "w_gate")
            x = x + ((g / (np.float32(1.0) + np.exp(-g))) * (h @ self._f32(p + "w_up"))) @ self._f32(p + "w_down")
        cache.tail_len += n
        last = self._norm(x[-1:], "norm")
        logits: F32 = (last @ self._f32("embed").T)[0]  # tied: the embedding is the output projection
        return logits

    def step(self, token: int, cache: KVCache) -> F32:
        return self.prefill([token], cache)

    def generate(self, prompt: Sequence[int], max_new: int, cache: KVCache | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[int]:
        """Greedy decoding of max_new tokens after prompt, which is appended to cache (a fresh one
        when None). The cache ends holding prompt and all but the last token made, so a
        continuation is generate([last], more, cache). on_token(index, token) is called as each
        token is made (for TTFT and time between tokens)."""
        if max_new < 0:
            raise ValueError(f"llm: max_new must be >= 0, not {max_new}")
        cache = self.new_cache() if cache is None else cache
        if cache.length + len(prompt) + max_new - 1 > self.cfg.max_ctx:
            raise ValueError(f"llm: context overflow: {cache.length} cached + {len(prompt)} prompt + {max_new} "
                             f"new tokens > max_ctx {self.cfg.max_ctx}")
        out: list[int] = []
        if max_new == 0:
            return out
        logits = self.prefill(prompt, cache)
        while True:
            token = int(np.argmax(logits))
            out.append(token)
            if on_token is not None:
                on_token(len(out) - 1, token)
            if len(out) == max_new:
                return out
            logits = self.step(token, cache)


def _from_env() -> tuple[str, Model]:
    preset = os.environ.get("LLM_PRESET", "ci")
    if preset not in PRESETS:
        raise ValueError(f"LLM_PRESET={preset!r}: known presets are {', '.join(PRESETS)}")
    dtype = os.environ.get("LLM_DTYPE", "float32")
    seed = int(os.environ.get("LLM_SEED", "0"))
    cfg = Config.from_json({**PRESETS[preset].to_json(), "dtype": dtype, "seed": seed})
    return preset, Model(cfg, tensors(cfg))


PRESET, MODEL = _from_env()


def handle(event: JsonObject) -> JsonObject:
    prompt, max_tokens = event.get("prompt", ""), event.get("max_tokens", 16)
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    _int_in("max_tokens", max_tokens, 1, MAX_TOKENS)
    tokens = encode(prompt)
    marks: list[float] = []
    t0 = time.perf_counter()
    out = MODEL.generate(tokens, max_tokens, on_token=lambda i, t: marks.append(time.perf_counter()))
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    cfg = MODEL.cfg
    return {"preset": PRESET, "dtype": str(cfg.dtype), "params": param_count(cfg), "prompt_tokens": len(tokens),
            "tokens": out, "text": decode(out), "prefill_s": round(marks[0] - t0, 6),
            # the same answer gives the same number, in every restore mode and on every node
            "digest": zlib.crc32(",".join(map(str, out)).encode()),
            "token_s": [round(g, 6) for g in gaps],
            "tokens_per_s": round(len(gaps) / sum(gaps), 3) if gaps and sum(gaps) > 0 else None}
