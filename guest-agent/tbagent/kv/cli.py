"""`tbagent kv format|put|get|exists|match|evict|stats`: the KV block pool in an MHD, JSON out.

put and match take a prompt (text, or token ids): put runs the prefill of the arena's model,
reusing what the pool holds, and publishes the new full blocks."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from tbagent.errors import command
from tbagent.functions.llm import PRESETS, Config, Model, encode, tensors
from tbagent.kv import layout, serving
from tbagent.kv.pool import KVPool, PoolError, format_arena
from tbagent.store.cli import open_store

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

    from tbagent.commands import Subcommands


def op_format(mhd: str, preset: str, block_tokens: int, slots: int, seed: int = 0, dtype: str = "float32",
              head: int | None = None) -> JsonObject:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: known presets are {', '.join(PRESETS)}")
    cfg = Config.from_json({**PRESETS[preset].to_json(), "seed": seed, "dtype": dtype})
    with open_store(mhd, head) as st:
        rec = format_arena(st, cfg, block_tokens, slots)
        return {"name": rec.name, "head": rec.head, "extent": rec.extents[0], "meta": rec.payload["meta"]}


def tokens_of(prompt: str | None, token_ids: str | None) -> list[int]:
    if (prompt is None) == (token_ids is None):
        raise ValueError("give exactly one of --prompt and --tokens")
    if prompt is not None:
        return encode(prompt)
    assert token_ids is not None
    try:
        return [int(t) for t in token_ids.split(",") if t.strip()]
    except ValueError:
        raise ValueError("--tokens is a comma-separated list of integers") from None


def _key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise PoolError(f"key {text!r:.40} is not hex") from None
    if len(key) != layout.KEY_BYTES:
        raise PoolError(f"a key is {layout.KEY_BYTES} bytes ({2 * layout.KEY_BYTES} hex digits), not {len(key)}")
    return key


def op_put(mhd: str, tokens: list[int], head: int | None = None) -> JsonObject:
    with open_store(mhd, head) as st, KVPool(st) as pool:
        out = serving.prefill(Model(pool.cfg, tensors(pool.cfg)), tokens, pool.block_tokens, pool)
        return {**out.figures(), "keys": [k.hex() for k in out.keys]}


def op_get(mhd: str, key: str, head: int | None = None) -> JsonObject:
    with open_store(mhd, head) as st, KVPool(st) as pool:
        block = pool.get(_key(key))
        if block is None:
            return {"key": key, "found": False}
        return {"key": key, "found": True, "head": block.head, "slot": block.slot, "seq": block.seq, "crc_ok": True,
                "bytes": int(block.k.nbytes + block.v.nbytes)}


def op_exists(mhd: str, keys: list[str], head: int | None = None) -> JsonObject:
    with open_store(mhd, head) as st, KVPool(st) as pool:
        idx = pool.index()
        return {k: _key(k) in idx for k in keys}


def op_match(mhd: str, tokens: list[int], head: int | None = None) -> JsonObject:
    with open_store(mhd, head) as st, KVPool(st) as pool:
        keys = layout.block_keys(tokens, pool.block_tokens)
        hit = pool.match(keys)
        return {"blocks": len(keys), "hit": hit, "tokens_cached": hit * pool.block_tokens, "keys": [k.hex() for k in keys]}


def op_evict(mhd: str, capacity: int, head: int | None = None) -> JsonObject:
    with open_store(mhd, head) as st, KVPool(st) as pool:
        gone = pool.evict(capacity)
        return {"capacity": capacity, "evicted": [k.hex() for k in gone]}


def op_stats(mhd: str, head: int | None = None) -> JsonObject:
    with open_store(mhd, head) as st, KVPool(st) as pool:
        return pool.stats()


def _print(obj: Json) -> None:
    print(json.dumps(obj, separators=(",", ":")))


@command("kv")
def _run(args: argparse.Namespace) -> int:
    h = args.head
    if args.op == "format":
        _print(op_format(args.mhd, args.preset, args.block_tokens, args.slots, args.seed, args.dtype, h))
    elif args.op == "put":
        _print(op_put(args.mhd, tokens_of(args.prompt, args.tokens), h))
    elif args.op == "get":
        _print(op_get(args.mhd, args.key, h))
    elif args.op == "exists":
        _print(op_exists(args.mhd, args.keys, h))
    elif args.op == "match":
        _print(op_match(args.mhd, tokens_of(args.prompt, args.tokens), h))
    elif args.op == "evict":
        _print(op_evict(args.mhd, args.capacity, h))
    elif args.op == "stats":
        _print(op_stats(args.mhd, h))
    return 0


def register(sub: Subcommands) -> None:
    kv = sub.add_parser("kv", help="the KV block pool in an MHD's shared CXL memory (Mooncake's KVCache pool)")
    ops = kv.add_subparsers(dest="op", required=True)

    def op(name: str, text: str) -> argparse.ArgumentParser:
        p = ops.add_parser(name, help=text)
        p.add_argument("mhd")
        p.add_argument("--head", type=int, help="this node's head (default: from the boot-time CXL set-up)")
        return p

    f = op("format", "publish this head's empty arena (record kvpool/<head>)")
    f.add_argument("--preset", default="ci", choices=sorted(PRESETS))
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--dtype", default="float32")
    f.add_argument("--block-tokens", type=int, default=16)
    f.add_argument("--slots", type=int, default=256, help="block slots in this head's arena")
    for name, text in (("put", "prefill a prompt, reusing cached blocks, and publish its new blocks"),
                       ("match", "how many of a prompt's blocks, from the first, the pool holds")):
        p = op(name, text)
        p.add_argument("--prompt")
        p.add_argument("--tokens", help="comma-separated token ids instead of a prompt")
    op("get", "read a block in place and verify it").add_argument("key", help="hex block key")
    op("exists", "whether the pool holds blocks").add_argument("keys", nargs="+")
    op("evict", "free this head's blocks outside the pool's `capacity` most recently used").add_argument(
        "--capacity", type=int, required=True)
    op("stats", "blocks, bytes, hits and misses per head")
    kv.set_defaults(fn=_run)
