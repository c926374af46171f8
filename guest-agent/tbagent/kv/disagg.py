"""The agent's kv.* ops: Mooncake's prefill/decode disaggregation on the `llm` model, three ways.

  colocated  prefill and decode on one node; nothing reused, nothing moved
  kv-net     prefill on one node, its KV cache sent over TCP to the decode node (standing in for
             Mooncake's RDMA transfer engine); no reuse across requests
  kv-cxl     prefill reuses the longest prefix of blocks the MHD's pool holds (put there by any
             node), publishes the new blocks; decode reads them in place on another node

Models are built once per (preset, dtype, seed) in the agent process: the weights are the same
on every node (deterministic from the seed), so nothing but tokens and KV moves."""

from __future__ import annotations

import functools
import secrets
import statistics
import threading
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from tbagent.functions.llm import Model
from tbagent.kv import serving
from tbagent.kv.pool import KVPool
from tbagent.llm import migrate
from tbagent.store.cli import open_store

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

DESIGNS = ("colocated", "kv-net", "kv-cxl")
MAX_TOKENS = 4096
KEY_BYTES = 16
NET_TIMEOUT_S = 120.0
_LOCK = threading.Lock()


@functools.cache
def _model(preset: str, dtype: str, seed: int) -> Model:
    return migrate.model_for(preset, dtype, seed)


def model(preset: str, dtype: str, seed: int) -> Model:
    with _LOCK:  # one build per model, not one per concurrent request
        return _model(preset, dtype, seed)


def _tokens(tokens: Sequence[int], what: str, vocab: int) -> list[int]:
    if not 1 <= len(tokens) <= MAX_TOKENS or not all(isinstance(t, int) and 0 <= t < vocab for t in tokens):
        raise ValueError(f"kv: {what} must be 1..{MAX_TOKENS} token ids in 0..{vocab - 1}")
    return list(tokens)


def _gaps(marks: list[float]) -> float | None:
    return statistics.median(b - a for a, b in pairwise(marks)) if len(marks) > 1 else None


def op_format(mhd: str, preset: str, block_tokens: int, slots: int = 256, dtype: str = "float32",
              seed: int = 0) -> JsonObject:
    from tbagent.kv import cli

    return cli.op_format(mhd, preset, block_tokens, slots, seed, dtype)


def op_prefill(design: str, mhd: str, preset: str, tokens: Sequence[int], block_tokens: int,
               decode: int = 0, bind: str | None = None, dtype: str = "float32", seed: int = 0) -> JsonObject:
    """The prompt's first token (and for colocated, `decode` more tokens here)."""
    if design not in DESIGNS:
        raise ValueError(f"kv: design {design!r} is not one of {', '.join(DESIGNS)}")
    net = model(preset, dtype, seed)
    ids = _tokens(tokens, "tokens", net.cfg.vocab)
    if len(ids) + max(decode, 0) > net.cfg.max_ctx:
        raise ValueError(f"kv: {len(ids)} tokens and {decode} more exceed the model's context of {net.cfg.max_ctx}")
    out: JsonObject = {"design": design, "blocks": len(ids) // block_tokens, "blocks_hit": 0, "blocks_put": 0,
                       "tokens_computed": len(ids), "past_bytes_copied": 0, "keys": [], "handle": None,
                       "decoded": [], "tbt_s": None}
    t0 = time.perf_counter()
    if design == "kv-cxl":
        with open_store(mhd) as st, KVPool(st, net.cfg, block_tokens) as pool:
            pre = serving.prefill(net, ids, block_tokens, pool, publish=True)
            kv_bytes = pre.cache.nbytes_used()
        out |= {"first": pre.first, "blocks": len(pre.keys), "blocks_hit": pre.blocks_hit, "blocks_put": pre.blocks_put,
                "tokens_computed": pre.tokens_computed, "past_bytes_copied": pre.past_bytes_copied,
                "keys": [k.hex() for k in pre.keys]}
        out["prefill_s"] = time.perf_counter() - t0
        out["kv_bytes"] = kv_bytes
        return out
    cache = net.new_cache()
    first = int(np.argmax(net.prefill(ids, cache)))
    out |= {"first": first, "prefill_s": time.perf_counter() - t0, "kv_bytes": cache.nbytes_used()}
    if design == "kv-net":
        header, k, v = cache.export()
        hid = secrets.token_hex(16)
        out["handle"] = {"id": hid, "kv-net": migrate.start_sender(hid, bind, header, k, v, NET_TIMEOUT_S)}
        return out
    if decode > 0:  # colocated: the decode goes on here, from this cache
        marks: list[float] = []
        out["decoded"] = net.generate([first], decode, cache, on_token=lambda i, t: marks.append(time.perf_counter()))
        out["tbt_s"] = _gaps(marks)
    return out


def op_decode(design: str, mhd: str, preset: str, tokens: Sequence[int], n: int, block_tokens: int,
              keys: Sequence[str] = (), handle: JsonObject | None = None, dtype: str = "float32",
              seed: int = 0) -> JsonObject:
    """n tokens after `tokens` (the prompt and its first token), from the blocks a prefill put
    in the pool (kv-cxl) or the cache it sends (kv-net)."""
    net = model(preset, dtype, seed)
    ids = _tokens(tokens, "tokens", net.cfg.vocab)
    if not 1 <= n <= MAX_TOKENS or len(ids) + n > net.cfg.max_ctx:
        raise ValueError(f"kv: n={n} must be 1..{MAX_TOKENS} and fit the model's context of {net.cfg.max_ctx}")
    marks: list[float] = []
    t0 = time.perf_counter()
    if design == "kv-cxl":
        if not all(isinstance(k, str) and len(k) == 2 * KEY_BYTES for k in keys):
            raise ValueError("kv: keys must be hex block keys")
        with open_store(mhd) as st, KVPool(st, net.cfg, block_tokens) as pool:
            out = serving.decode(net, ids, [bytes.fromhex(k) for k in keys], n, pool,
                                 on_token=lambda i, t: marks.append(time.perf_counter()))
        # K and V (float32) of every position the blocks hold, read in place
        kv = 2 * net.cfg.layers * net.cfg.dim * 4 * min(len(keys) * block_tokens, len(ids) - 1)
        return {"tokens": out, "decode_s": time.perf_counter() - t0, "tbt_s": _gaps(marks),
                "restore_s": marks[0] - t0 if marks else None, "bytes_net": 0, "bytes_cxl_read": kv}
    if design != "kv-net" or not isinstance(handle, dict) or not isinstance(handle.get("kv-net"), dict):
        raise ValueError("kv: decode takes kv-cxl keys or a kv-net handle")
    cache, sizes = migrate.receive_kv(handle["kv-net"], net.cfg, NET_TIMEOUT_S)
    if cache.length != len(ids) - 1:
        raise ValueError(f"kv: the received cache holds {cache.length} positions, the request {len(ids) - 1}")
    restore = time.perf_counter() - t0
    out = net.generate([ids[-1]], n, cache, on_token=lambda i, t: marks.append(time.perf_counter()))
    return {"tokens": out, "decode_s": time.perf_counter() - t0, "tbt_s": _gaps(marks), "restore_s": restore,
            "bytes_net": int(sizes.get("net", 0)), "bytes_cxl_read": 0}
