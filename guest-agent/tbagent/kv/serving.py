"""Prefill and decode over the KV pool (Mooncake's disaggregated serving, on the llm workload).

prefill() reuses the longest prefix of the prompt's blocks that the pool holds, computes the
rest, publishes the new full blocks and returns the first token; decode() continues on another
head from the blocks a prefill published.

The reused past enters the KVCache read-only. One block is used in place (a view of the shared
mapping); several blocks are joined into one local array, because KVCache keeps its past as one
[layers, heads, length, head_dim] array and blocks lie in separate slots: that copy is counted
in `past_bytes_copied`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tbagent.functions.llm import KVCache, Model
from tbagent.kv import layout
from tbagent.kv.pool import Block, KVPool, PoolError


@dataclass(frozen=True)
class Prefill:
    first: int  # the first generated token
    keys: list[bytes]  # the prompt's full-block keys (what a decode node needs)
    blocks_hit: int
    blocks_put: int
    tokens_computed: int
    past_bytes_copied: int
    seconds: float
    cache: KVCache

    def figures(self) -> dict[str, object]:
        return {"first": self.first, "blocks": len(self.keys), "blocks_hit": self.blocks_hit,
                "blocks_put": self.blocks_put, "tokens_computed": self.tokens_computed,
                "past_bytes_copied": self.past_bytes_copied, "seconds": round(self.seconds, 6)}


def _restore(model: Model, pool: KVPool, keys: Sequence[bytes]) -> tuple[KVCache, int, int]:
    """A cache holding the longest run of keys' blocks the pool can give (a block refused or
    evicted since match ends the run); returns (cache, blocks used, bytes copied)."""
    blocks: list[Block] = []
    for key in keys:
        try:
            block = pool.get(key)
        except PoolError:
            block = None
        if block is None:
            break
        blocks.append(block)
    if not blocks:
        return model.new_cache(), 0, 0
    if len(blocks) == 1:
        return KVCache(model.cfg, blocks[0].k, blocks[0].v), 1, 0
    past_k = np.concatenate([b.k for b in blocks], axis=2)
    past_v = np.concatenate([b.v for b in blocks], axis=2)
    past_k.flags.writeable = past_v.flags.writeable = False
    return KVCache(model.cfg, past_k, past_v), len(blocks), past_k.nbytes + past_v.nbytes


def _publish(pool: KVPool, cache: KVCache, keys: Sequence[bytes], start: int, bt: int) -> int:
    """Put blocks start.. of keys, whose positions lie in the cache's local tail; returns how
    many were new to the pool."""
    before = pool.index()
    for i in range(start, len(keys)):
        a, b = i * bt - cache.past_len, (i + 1) * bt - cache.past_len
        if a >= 0:
            pool.put(keys[i], cache.k[:, :, a:b], cache.v[:, :, a:b])
    return sum(1 for key in keys[start:] if key not in before)


def prefill(model: Model, tokens: Sequence[int], block_tokens: int, pool: KVPool, publish: bool = True) -> Prefill:
    """The prompt's first token, reusing the pool's longest cached prefix of its blocks."""
    if not tokens:
        raise ValueError("kv prefill: the prompt is empty")
    if pool.cfg != model.cfg or pool.block_tokens != block_tokens:
        raise PoolError("kv prefill: the pool holds blocks of another model config or block size")
    t0 = time.perf_counter()
    keys = layout.block_keys(tokens, block_tokens)
    # At least one token is computed: its logits give the first token.
    usable = min(pool.match(keys), (len(tokens) - 1) // block_tokens)
    cache, hit, copied = _restore(model, pool, keys[:usable])
    logits = model.prefill(list(tokens[hit * block_tokens:]), cache)
    first = int(np.argmax(logits))
    put = _publish(pool, cache, keys, hit, block_tokens) if publish else 0
    return Prefill(first, keys, hit, put, len(tokens) - hit * block_tokens, copied, time.perf_counter() - t0, cache)


def decode(model: Model, tokens: Sequence[int], keys: Sequence[bytes], n: int, pool: KVPool,
           on_token: Callable[[int, int], None] | None = None) -> list[int]:
    """n tokens after `tokens` (the prompt and its first token), continuing from the pool's blocks
    of keys (the prompt's, from prefill); positions the blocks do not hold are computed here."""
    if n < 1:
        raise ValueError(f"kv decode: n must be >= 1, not {n}")
    bt = pool.block_tokens
    if list(keys) != layout.block_keys(tokens, bt)[:len(keys)]:
        raise PoolError("kv decode: the keys are not those of these tokens")
    usable = min(len(keys), (len(tokens) - 1) // bt)
    cache, hit, _ = _restore(model, pool, keys[:usable])
    return model.generate(list(tokens[hit * bt:]), n, cache, on_token=on_token)
