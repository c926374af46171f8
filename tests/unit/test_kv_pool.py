"""The KV block pool (tbagent.kv) on a plain file standing in for the MHD: two heads, the tiny model."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tbagent import cli as tbagent_cli
from tbagent.functions.llm import BOS, PRESETS, Config, Model, encode, tensors
from tbagent.kv import layout, serving
from tbagent.kv.layout import Geometry, State
from tbagent.kv.pool import KVPool, PoolError, format_arena, record_name
from tbagent.store import Store

from tests.unit.llmdevice import cache_lib_fixture, device_fixture  # noqa: F401  (fixtures)
from tests.unit.noncoherent import Fabric

CFG = PRESETS["tiny"]
BT = 4
SLOTS = 8


def clock_from(counter: itertools.count[int]) -> Callable[[], int]:
    return lambda: next(counter)


def block_data(key: bytes, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic k and v for a key, so a reader can check what it got without the writer."""
    rng = np.random.default_rng(list(key))
    return (rng.standard_normal(geo.shape, dtype=np.float32), rng.standard_normal(geo.shape, dtype=np.float32))


def formatted(device: str, slots: int = SLOTS, cfg: Config = CFG) -> None:
    for head in (0, 1):
        with Store(device, head) as st:
            format_arena(st, cfg, BT, slots)


def test_round_trip_is_zero_copy_and_read_only(device: str) -> None:
    formatted(device)
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        key = layout.block_keys(list(range(BT)), BT)[0]
        k, v = block_data(key, p0.geo)
        entry = p0.put(key, k, v)
        assert entry.head == 0
        block = p1.get(key)
        assert block is not None and block.head == 0
        np.testing.assert_array_equal(block.k, k)
        np.testing.assert_array_equal(block.v, v)
        assert np.shares_memory(block.k, p1.bytes) and np.shares_memory(block.v, p1.bytes)
        assert not block.k.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            block.k[0, 0, 0, 0] = 1.0
        assert p1.exists(key) and not p1.exists(bytes(16))
        assert p1.get(bytes(16)) is None
        # putting a key the pool has is a no-op that names the existing copy
        assert p1.put(key, k, v).head == 0
        assert p1.stats()["blocks"] == 1


def test_key_chaining() -> None:
    a = [BOS, *range(40)]
    b = list(a)
    b[9] = 7  # in block 2 (of 4 tokens)
    ka, kb = layout.block_keys(a, BT), layout.block_keys(b, BT)
    assert len(ka) == len(a) // BT  # a partial last block has no key
    assert ka[:2] == kb[:2]
    assert all(x != y for x, y in zip(ka[2:], kb[2:], strict=True))
    c = [0, *a[1:]]  # a different first token changes every key
    assert all(x != y for x, y in zip(ka, layout.block_keys(c, BT), strict=True))
    # key i depends on nothing after block i
    assert layout.block_keys(a[:3 * BT], BT) == ka[:3]
    assert layout.block_keys(a, BT + 1)[0] != ka[0]
    # the chain, from an independent reading of the definition
    prev = hashlib.blake2b(struct.pack("<Q", BT), digest_size=16, person=b"tb-kv-root").digest()
    prev = hashlib.blake2b(prev + struct.pack("<4q", *a[:4]), digest_size=16, person=b"tb-kv-block").digest()
    prev = hashlib.blake2b(prev + struct.pack("<4q", *a[4:8]), digest_size=16, person=b"tb-kv-block").digest()
    assert ka[1] == prev


def test_match_finds_the_longest_prefix_across_heads(device: str) -> None:
    formatted(device)
    keys = layout.block_keys(list(range(5 * BT)), BT)
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        p0.put(keys[0], *block_data(keys[0], p0.geo))
        p0.put(keys[1], *block_data(keys[1], p0.geo))
        p1.put(keys[2], *block_data(keys[2], p1.geo))
        p1.put(keys[4], *block_data(keys[4], p1.geo))  # after a gap: not part of the prefix
        assert p0.match(keys) == 3
        assert p1.match(keys) == 3
        assert p1.match(keys[1:]) == 2
        assert p0.match([keys[3], *keys]) == 0
        heads = p0.stats()["heads"]
        assert isinstance(heads, dict)
        assert heads["0"]["hits"] == 3 and heads["0"]["misses"] == 2 + 0 + 6
        assert heads["1"]["hits"] == 5 and heads["1"]["misses"] == 2 + 2


def flip(st: Store, off: int) -> None:
    st.mm[off:off + 1] = bytes([st.mm[off:off + 1][0] ^ 0x10])


def _slot_offsets(pool: KVPool, slot: int) -> tuple[int, int]:
    arena = pool.own
    return arena.off + arena.geo.slot_hdr(slot), arena.off + arena.geo.slot_data(slot)


def test_torn_write_is_invisible(device: str) -> None:
    formatted(device)
    key = layout.block_keys(list(range(BT)), BT)[0]
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        k, v = block_data(key, p0.geo)
        hdr, data = _slot_offsets(p0, 0)
        raw = k.tobytes() + v.tobytes()
        s0.mm[data:data + len(raw)] = raw
        s0.mm[hdr:hdr + layout.HDR.size] = layout.pack_header(key, p0.fp, 1, zlib.crc32(raw), 0)  # flag not set
        assert not p1.exists(key) and p1.match([key]) == 0 and p1.get(key) is None
        s0.cache.publish_u32(hdr + layout.STATE_OFFSET, State.PUBLISHED)  # the flag makes it visible
        block = p1.get(key)
        assert block is not None
        np.testing.assert_array_equal(block.v, v)


def test_corruption_in_another_heads_arena_is_refused(device: str) -> None:
    formatted(device)
    keys = layout.block_keys(list(range(3 * BT)), BT)
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        for key in keys:
            p1.put(key, *block_data(key, p1.geo))
        _, data0 = _slot_offsets(p1, 0)
        flip(s1, data0 + 5)  # bad data crc
        hdr1, _ = _slot_offsets(p1, 1)
        flip(s1, hdr1 + 10)  # a bit of the key: bad header crc
        hdr2, _ = _slot_offsets(p1, 2)
        other = layout.fingerprint(Config(**{**CFG.to_json(), "seed": 9}))
        raw = s1.mm[hdr2:hdr2 + layout.HDR.size]
        _m, _s, key2, _fp, seq, crc, slot, _h = layout.HDR.unpack(raw)
        s1.mm[hdr2:hdr2 + layout.HDR.size] = layout.pack_header(key2, other, seq, crc, slot, State.PUBLISHED)
        with pytest.raises(PoolError, match="data checksum mismatch"):
            p0.get(keys[0])
        assert p0.get(keys[1]) is None and p0.get(keys[2]) is None
        whys = {(p["slot"], p["why"]) for p in p0.problems}
        assert (1, "header checksum mismatch") in whys and (2, "block of another model config") in whys
        assert p0.match(keys) == 1  # match reads headers only: block 0's data is refused by get


def test_bad_arenas_are_ignored_with_a_reason(device: str, tmp_path: Path) -> None:
    with Store(device, 0) as s0:
        format_arena(s0, CFG, BT, SLOTS)
    with Store(device, 1) as s1:  # an arena whose meta claims more slots than its extent holds
        meta = Geometry(CFG, BT, 1 << 16).meta()
        s1.publish(record_name(1), [bytes(8192)], meta)
    with Store(device, 0) as s0, KVPool(s0) as p0:
        assert set(p0.arenas) == {0}
        assert any("does not fit its extent" in str(p["why"]) for p in p0.problems)


def test_an_arena_of_another_model_is_ignored(device: str) -> None:
    with Store(device, 0) as s0:
        format_arena(s0, CFG, BT, SLOTS)
    other = Config(**{**CFG.to_json(), "seed": 3})
    with Store(device, 1) as s1:
        format_arena(s1, other, BT, SLOTS)
    key = layout.block_keys(list(range(BT)), BT)[0]
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        p1.put(key, *block_data(key, p1.geo))
        assert p1.exists(key)
        assert set(p0.arenas) == {0} and not p0.exists(key)
        assert any(p["why"] == "arena of another model config" for p in p0.problems)


def _worker(device: str, head: int, lock_dir: str, keys: list[bytes], out: multiprocessing.Queue[object]) -> None:
    import tbagent.store.core as core

    core.LOCK_DIR = Path(lock_dir)
    with Store(device, head) as st, KVPool(st) as pool:
        seen = []
        for i, key in enumerate(keys):
            pool.put(key, *block_data(key, pool.geo))
            seen.append(pool.match(keys))
            assert seen[-1] >= i + 1
        out.put((head, seen))


def test_two_heads_put_and_match_at_once(device: str, tmp_path: Path) -> None:
    formatted(device, slots=24)
    shared = layout.block_keys(list(range(10 * BT)), BT)
    own = [shared + layout.block_keys([h, *range(1, 10 * BT)], BT) for h in (0, 1)]
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue[object] = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(device, h, str(tmp_path / "locks"), own[h], q)) for h in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(device, 0) as st, KVPool(st) as pool:
        for keys in own:
            assert pool.match(keys) == len(keys)
            for key in keys:
                block = pool.get(key)
                assert block is not None
                k, v = block_data(key, pool.geo)
                np.testing.assert_array_equal(block.k, k)
                np.testing.assert_array_equal(block.v, v)
        assert not pool.problems


def test_lru_eviction_is_global_and_frees_only_own_blocks(device: str) -> None:
    formatted(device)
    a, b, c, d = layout.block_keys(list(range(4 * BT)), BT)
    counter = itertools.count(1)
    with Store(device, 0) as s0, Store(device, 1) as s1, \
            KVPool(s0, clock=clock_from(counter)) as p0, KVPool(s1, clock=clock_from(counter)) as p1:
        p0.put(a, *block_data(a, p0.geo))  # t=1
        p0.put(b, *block_data(b, p0.geo))  # t=2
        p1.put(c, *block_data(c, p1.geo))  # t=3
        p1.put(d, *block_data(d, p1.geo))  # t=4
        assert p1.get(a) is not None  # t=5, in head 1's use table: a is now the most recent
        # global recency: a (5), d (4), c (3), b (2); capacity 2 keeps a and d
        assert p0.evict(2) == [b]
        assert p0.exists(c) and p0.exists(a)  # head 0 never frees head 1's c, though c is older than a
        assert p1.evict(2) == [c]
        assert sorted(k for k in (a, b, c, d) if p0.exists(k)) == sorted([a, d])
        assert p0.evict(2) == [] and p1.evict(2) == []


def test_a_full_arena_reuses_its_least_recently_used_slot(device: str) -> None:
    formatted(device, slots=2)
    a, b, c = layout.block_keys(list(range(3 * BT)), BT)
    counter = itertools.count(1)
    with Store(device, 0) as s0, Store(device, 1) as s1, \
            KVPool(s0, clock=clock_from(counter)) as p0, KVPool(s1, clock=clock_from(counter)) as p1:
        p0.put(a, *block_data(a, p0.geo))
        p0.put(b, *block_data(b, p0.geo))
        assert p1.get(a) is not None  # another head's use counts too
        p0.put(c, *block_data(c, p0.geo))
        assert p0.exists(a) and p0.exists(c) and not p0.exists(b)
        block = p1.get(c)
        assert block is not None
        np.testing.assert_array_equal(block.k, block_data(c, p0.geo)[0])


def test_prefill_with_reuse_gives_the_tokens_of_one_without(device: str) -> None:
    formatted(device, slots=32)
    model = Model(CFG, tensors(CFG))
    prompt = encode("the cat sat on the mat, the dog")  # 32 tokens: 8 blocks
    ref = model.generate(prompt, 6)
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        pf = serving.prefill(model, prompt, BT, p0)
        assert (pf.first, pf.blocks_hit, pf.blocks_put, pf.tokens_computed) == (ref[0], 0, 8, len(prompt))
        # decode on the other head, from the blocks in place
        assert serving.decode(model, [*prompt, pf.first], pf.keys, 5, p1) == ref[1:]
        # a prompt sharing 3 blocks: those are reused, the rest computed
        prompt2 = [*prompt[:3 * BT], *encode("a fox ran")[1:]]
        ref2 = model.generate(prompt2, 4)
        pf2 = serving.prefill(model, prompt2, BT, p1)
        assert (pf2.first, pf2.blocks_hit, pf2.tokens_computed) == (ref2[0], 3, len(prompt2) - 3 * BT)
        assert pf2.past_bytes_copied == 2 * 3 * p1.geo.part_bytes
        assert serving.decode(model, [*prompt2, pf2.first], pf2.keys, 3, p0) == ref2[1:]
        # one block is used in place: the past is a view of the shared mapping
        prompt3 = [*prompt[:BT], *encode("xyz")[1:]]
        pf3 = serving.prefill(model, prompt3, BT, p1)
        assert pf3.blocks_hit == 1 and pf3.past_bytes_copied == 0
        assert np.shares_memory(pf3.cache.past_k, p1.bytes)
        assert pf3.first == model.generate(prompt3, 1)[0]
        # a whole prompt in the pool still computes its last token (its logits give the first)
        pf4 = serving.prefill(model, prompt, BT, p1)
        assert (pf4.first, pf4.blocks_hit, pf4.tokens_computed) == (ref[0], 7, BT)


def test_cli_json(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> Any:
        assert tbagent_cli.main(["kv", *argv, "--head", argv_head[0]]) == 0
        return json.loads(capsys.readouterr().out)

    argv_head = ["0"]
    made = run("format", device, "--preset", "tiny", "--block-tokens", str(BT), "--slots", "16")
    assert made["name"] == "kvpool/0" and made["meta"]["slots"] == 16
    argv_head[0] = "1"
    run("format", device, "--preset", "tiny", "--block-tokens", str(BT), "--slots", "16")
    put = run("put", device, "--prompt", "hello, world")  # 13 tokens: 3 blocks
    assert (put["blocks"], put["blocks_hit"], put["blocks_put"]) == (3, 0, 3)
    argv_head[0] = "0"
    assert run("match", device, "--prompt", "hello, there")["hit"] == 2  # "<BOS>hel" "lo, " are shared
    got = run("get", device, put["keys"][2])
    assert got["found"] and got["head"] == 1 and got["bytes"] == 2 * Geometry(CFG, BT, 1).part_bytes
    assert run("exists", device, put["keys"][0], "00" * 16) == {put["keys"][0]: True, "00" * 16: False}
    stats = run("stats", device)
    assert stats["blocks"] == 3 and stats["heads"]["1"]["blocks"] == 3 and stats["heads"]["0"]["hits"] == 2
    assert run("evict", device, "--capacity", "0")["evicted"] == []  # head 0 owns none of them
    argv_head[0] = "1"
    assert len(run("evict", device, "--capacity", "1")["evicted"]) == 2
    assert tbagent_cli.main(["kv", "get", device, "zz", "--head", "0"]) != 0
    assert "not hex" in capsys.readouterr().err


def test_protocol_holds_on_non_coherent_memory(device: str) -> None:
    """Each head's writes stay in its own cache until flushed (tests/unit/noncoherent.py): a
    missing flush leaves the other head's read of memory without the data, and a flag published
    with anything unflushed raises Violation."""
    fab = Fabric()
    keys = layout.block_keys(list(range(4 * BT)), BT)
    with Store(device, 0, attach=fab.attach) as s0, Store(device, 1, attach=fab.attach) as s1:
        format_arena(s0, CFG, BT, SLOTS)
        format_arena(s1, CFG, BT, SLOTS)
        counter = itertools.count(1)
        with KVPool(s0, clock=clock_from(counter)) as p0, KVPool(s1, clock=clock_from(counter)) as p1:
            start = len(fab.events)
            p0.put(keys[0], *block_data(keys[0], p0.geo))
            hdr, data = _slot_offsets(p0, 0)
            ops = [(op, off) for view, op, off, _ in fab.events[start:] if view == 0 and op in ("flush", "publish")]
            assert ops[-1] == ("publish", hdr + layout.STATE_OFFSET)
            assert ops[-2] == ("flush", hdr) and ("flush", data) in ops[:-2]
            p1.put(keys[1], *block_data(keys[1], p1.geo))
            assert p1.match(keys) == 2 and p0.match(keys) == 2
            for key, pool in ((keys[0], p1), (keys[1], p0)):
                block = pool.get(key)
                assert block is not None
                np.testing.assert_array_equal(block.k, block_data(key, pool.geo)[0])
            # keys[1] was used last (by head 0), so head 0 frees its keys[0]
            assert p0.evict(1) == [keys[0]]
            assert p1.stats()["blocks"] == 1 and p1.match(keys) == 0


def test_a_block_evicted_while_read_is_a_miss_not_an_error(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    formatted(device, slots=1)
    a, b = layout.block_keys(list(range(2 * BT)), BT)
    with Store(device, 0) as s0, Store(device, 1) as s1, KVPool(s0) as p0, KVPool(s1) as p1:
        p0.put(a, *block_data(a, p0.geo))
        stale = p1.index()  # what p1 saw just before head 0 reused the slot
        p0.put(b, *block_data(b, p0.geo))  # the arena is full: a's slot now holds b
        monkeypatch.setattr(p1, "index", lambda: stale)
        assert p1.get(a) is None
        assert {"head": 0, "slot": 0, "why": "evicted while being read"} in p1.problems


def test_a_use_time_far_in_the_future_does_not_pin_a_block(device: str) -> None:
    formatted(device)
    a, b = layout.block_keys(list(range(2 * BT)), BT)
    counter = itertools.count(1)
    with Store(device, 0) as s0, Store(device, 1) as s1, \
            KVPool(s0, clock=clock_from(counter)) as p0, KVPool(s1, clock=clock_from(counter)) as p1:
        p0.put(a, *block_data(a, p0.geo))
        p0.put(b, *block_data(b, p0.geo))
        arena = p1.own  # head 1 claims a use of `a` an hour ahead
        t = 3600 * 10**9
        s1.mm[arena.off + arena.geo.use_off:arena.off + arena.geo.use_off + layout.USE.size] = \
            layout.USE.pack(a, t, layout.use_crc(a, t))
        assert p0.evict(1) == [a]
