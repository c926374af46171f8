"""The Conductor: cache-aware placement against load, the baselines, early rejection, what each
design can reuse, and place/done from many threads. Expected times are worked out by hand from
the cost model (0.01 s a token, 16 tokens a block, 1 ms to move a block at 1 MB/s)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from testbed.scenario.conductor import (
    POOL,
    Conductor,
    Costs,
    Decision,
    Design,
    Job,
    Measured,
    Policy,
    Slo,
    jobs_of,
)
from testbed.scenario.spec.tokentrace import Scale, load_mooncake, reuse_bound, scale

SAMPLE = Path(__file__).resolve().parents[2] / "scenarios" / "traces" / "mooncake-sample.jsonl"
COSTS = Costs(prefill_s_per_token=0.01, decode_s_per_token=0.1, block_bytes=1000, transfer_bytes_per_s=1e6)


def job(name: str, blocks: range | list[int], tail: int = 16) -> Job:
    """A job of the given blocks, 16 tokens each but the last with `tail`."""
    ids = tuple(blocks)
    return Job(name, ids, 16 * (len(ids) - 1) + tail, 4, 16)


A = job("a", range(1, 11))  # 160 tokens: 1.6 s uncached
B = job("b", range(1, 13))  # A's 10 blocks and 2 more: 0.32 s after a hit of 10
C = job("c", range(100, 200))  # 1,600 unrelated tokens: 16 s


def conductor(design: Design, policy: Policy = Policy.CACHE_AWARE, **kw: object) -> Conductor:
    args: dict[str, object] = {"prefill": ("p0", "p1"), "decode": ("d0",)}
    args.update(kw)
    return Conductor(design, policy, COSTS, **args)  # type: ignore[arg-type]


def test_cache_aware_picks_the_holder_when_idle() -> None:
    c = conductor(Design.KV_NET)
    a = c.place(A)
    assert (a.prefill, a.decode, a.hit_blocks, a.source) == ("p0", "d0", 0, None)
    assert a.ttft_s == pytest.approx(1.6 + 0.010)  # prefill + the 10-block handoff to d0
    c.prefilled(a)
    b = c.place(B)
    assert (b.prefill, b.hit_blocks, b.source) == ("p0", 10, "p0")
    assert b.prefill_s == pytest.approx(0.32)
    assert b.ttft_s == pytest.approx(0.32 + 0.012)
    assert b.transfer_bytes == 12 * 1000  # the handoff only


def test_cache_aware_leaves_the_holder_when_its_queue_is_longer() -> None:
    c = conductor(Design.KV_NET)
    c.prefilled(c.place(A))  # p0 holds blocks 1..10
    busy = c.place(C)  # both idle: p0 by order; 16 s of queue on p0 from now
    assert busy.prefill == "p0" and c.state().nodes["p0"].prefill_queue_s == pytest.approx(16.0)
    b = c.place(B)
    # p0: 16 + 0.32 + 0.012; p1: fetch 10 blocks from p0 (0.010) + 0.32 + 0.012
    assert (b.prefill, b.hit_blocks, b.source) == ("p1", 10, "p0")
    assert b.ttft_s == pytest.approx(0.342)
    assert b.transfer_bytes == (10 + 12) * 1000


def test_kv_net_recomputes_when_fetching_costs_more() -> None:
    slow = Costs(prefill_s_per_token=0.01, decode_s_per_token=0.1, block_bytes=1000, transfer_bytes_per_s=1000)
    c = Conductor(Design.KV_NET, Policy.CACHE_AWARE, slow, prefill=("p0", "p1"), decode=("d0",))
    c.prefilled(c.place(A))  # p0 holds blocks 1..10
    c.place(C)  # p0 (tie): 16 s of queue
    b = c.place(B)
    # p0: 16 + 0.32 + 12 s handoff = 28.32; p1: min(1.92 computing all, 10 s fetch + 0.32) + 12 = 13.92
    assert (b.prefill, b.hit_blocks, b.source, b.transfer_bytes) == ("p1", 0, None, 12000)
    assert b.ttft_s == pytest.approx(13.92)


HEAVY = [job(f"h{i}", list(range(1, 11)) + list(range(1000 * (i + 1), 1000 * (i + 1) + 90))) for i in range(3)]


def test_cache_only_ignores_load() -> None:
    # Three long jobs share A's prefix (100 blocks, 90 to compute: 14.4 s each).
    placed = {}
    for policy in (Policy.CACHE_ONLY, Policy.CACHE_AWARE):
        c = conductor(Design.KV_NET, policy)
        c.prefilled(c.place(A))  # p0
        heavy = [c.place(h).prefill for h in HEAVY]
        b = c.place(B)
        placed[policy] = (heavy, b.prefill, b.hit_blocks, b.source, round(b.ttft_s, 6))
    # cache-only piles everything on the holder: 3 x 14.4 s of queue before B's 0.32 + 0.012
    assert placed[Policy.CACHE_ONLY] == (["p0", "p0", "p0"], "p0", 10, "p0", round(43.2 + 0.332, 6))
    # cache-aware: p0 (14.5 vs 14.51), p1 (28.9 vs 14.51), p0 (28.9 vs 28.91); then B on p1,
    # fetching the prefix from p0: 14.4 queue + 0.010 fetch + 0.32 + 0.012 handoff
    assert placed[Policy.CACHE_AWARE] == (["p0", "p1", "p0"], "p1", 10, "p0", round(14.742, 6))


def test_cache_only_ties_rotate() -> None:
    c = conductor(Design.KV_CXL, Policy.CACHE_ONLY, prefill=("p0", "p1", "p2"))
    assert [c.place(job(f"n{i}", [i])).prefill for i in range(4)] == ["p0", "p1", "p2", "p0"]


def test_round_robin_rotates() -> None:
    c = Conductor(Design.KV_CXL, Policy.ROUND_ROBIN, COSTS, prefill=("p0", "p1", "p2"), decode=("d0", "d1"))
    got = []
    for i in range(5):
        d = c.place(A if i else C)
        c.prefilled(d)
        got.append((d.prefill, d.decode))
    assert got == [("p0", "d0"), ("p1", "d1"), ("p2", "d0"), ("p0", "d1"), ("p1", "d0")]


def test_early_rejection_ttft_and_tbt() -> None:
    c = conductor(Design.KV_CXL, slo=Slo(ttft_s=1.0, tbt_s=0.15))
    r = c.place(A)  # 1.6 s > 1 s
    assert r.rejected and "TTFT 1.600 s > SLO 1.000 s" in r.reason
    s = c.state()
    assert (s.placed, s.rejected, s.nodes["p0"].prefill_queue_s, s.nodes["d0"].decoding) == (0, 1, 0.0, 0)
    c.done(r, Measured())  # ignored
    ok = c.place(job("s", range(1, 3)))  # 0.32 s, TBT 0.1
    assert not ok.rejected and ok.tbt_s == pytest.approx(0.1) and ok.reason == ""
    second = c.place(job("t", range(5, 7)))  # d0 decodes two: 0.2 s a token
    assert second.rejected and "TBT 0.200 s > SLO 0.150 s" in second.reason
    c.done(ok, Measured())
    assert not c.place(job("t", range(5, 7))).rejected  # d0 free again


def test_kv_cxl_sees_every_block_from_every_node() -> None:
    c = conductor(Design.KV_CXL)
    c.prefilled(c.place(A))
    c.place(C)  # p0 busy
    b = c.place(B)
    assert (b.prefill, b.hit_blocks, b.source, b.transfer_bytes) == ("p1", 10, POOL, 0)
    assert b.ttft_s == pytest.approx(0.32)
    assert c.state().pool_blocks == 10


def test_colocated_sees_nothing() -> None:
    c = conductor(Design.COLOCATED, decode=())
    a = c.place(A)
    c.prefilled(a)
    b = c.place(B)
    assert (a.prefill, a.decode, b.prefill, b.decode) == ("p0", "p0", "p1", "p1")  # p0 is decoding a
    assert (b.hit_blocks, b.source, b.transfer_bytes) == (0, None, 0)
    assert b.ttft_s == pytest.approx(1.92)
    with pytest.raises(ValueError, match="colocated"):
        Conductor(Design.COLOCATED, Policy.CACHE_AWARE, COSTS, prefill=("p0",), decode=("d0",))


def test_lru_capacity() -> None:
    c = conductor(Design.KV_CXL, capacity_blocks=2)
    c.prefilled(c.place(job("x", [1, 2])))
    c.prefilled(c.place(job("y", [3])))  # evicts 1
    assert c.place(job("u", [1, 2])).hit_blocks == 0
    assert c.place(job("v", [2, 3, 4])).hit_blocks == 2


def test_done_checks_and_failure_caches_nothing() -> None:
    c = conductor(Design.KV_CXL)
    a = c.place(A)
    c.done(a, Measured(ok=False))
    assert c.state().pool_blocks == 0 and c.state().done == 1
    with pytest.raises(ValueError, match="not outstanding"):
        c.done(a, Measured())
    b = c.place(A)
    c.done(b, Measured(stored_blocks=4))
    assert c.place(A).hit_blocks == 4
    with pytest.raises(ValueError, match="stored_blocks"):
        c.prefilled(c.place(B), stored_blocks=13)


def test_replay_reaches_the_reuse_bound() -> None:
    """With an unbounded cache and each prefill over before the next arrives, kv-cxl reuses the
    trace's whole reusable prefix, as does kv-net on one prefill node; colocated reuses none."""
    trace = scale(load_mooncake(SAMPLE), Scale(block_tokens=16))
    bound = sum(reuse_bound(trace).prefix_blocks)
    assert bound == 676
    for design, prefill, expect in ((Design.KV_CXL, ("p0", "p1", "p2"), bound), (Design.KV_NET, ("p0",), bound),
                                    (Design.COLOCATED, ("p0", "p1"), 0)):
        c = Conductor(design, Policy.CACHE_AWARE, COSTS, prefill=prefill, decode=() if design is Design.COLOCATED
                      else ("d0",))
        hits = []
        for j in jobs_of(trace):
            d = c.place(j)
            c.done(d, Measured())
            hits.append(d.hit_blocks)
        assert tuple(hits) == (reuse_bound(trace).prefix_blocks if expect else (0,) * len(hits))
        s = c.state()
        assert (s.hit_blocks, s.needed_blocks, s.placed, s.done) == (expect, 8490, 300, 300)


ROUNDS = 4


def test_concurrent_place_and_done() -> None:
    trace = scale(load_mooncake(SAMPLE), Scale(block_tokens=16))
    jobs = jobs_of(trace)
    c = Conductor(Design.KV_NET, Policy.CACHE_AWARE, COSTS, prefill=("p0", "p1", "p2"), decode=("d0", "d1"))
    decisions: list[Decision] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            for j in jobs[k::8] * ROUNDS:
                d = c.place(j)
                c.prefilled(d)
                c.done(d, Measured())
                with lock:
                    decisions.append(d)
        except BaseException as exc:  # surfaced below, not lost with the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a missing lock shows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert sorted(d.seq for d in decisions) == list(range(ROUNDS * len(jobs)))
    s = c.state()
    assert (s.placed, s.done, s.rejected, s.needed_blocks) == (ROUNDS * 300, ROUNDS * 300, 0, ROUNDS * 8490)
    assert all(n.prefill_queue_s == 0.0 and n.decode_load_s == 0.0 and n.decoding == 0 for n in s.nodes.values())
    # Every node holds exactly what it prefilled.
    by_id = {j.id: j for j in jobs}
    for node in ("p0", "p1", "p2"):
        held = {b for d in decisions if d.prefill == node for b in by_id[d.job].blocks}
        assert s.nodes[node].cached_blocks == len(held)


def test_deterministic() -> None:
    jobs = jobs_of(scale(load_mooncake(SAMPLE), Scale(block_tokens=16)))[:80]

    def run() -> list[Decision]:
        c = Conductor(Design.KV_NET, Policy.CACHE_AWARE, COSTS, prefill=("p0", "p1"), decode=("d0", "d1"),
                      slo=Slo(ttft_s=5.0))
        out = []
        for i, j in enumerate(jobs):
            out.append(c.place(j))
            if i % 3 == 2:  # leave some in flight, so queues matter
                c.done(out[-3], Measured())
        return out

    first = run()
    assert first == run()
    assert {d.prefill for d in first} == {"p0", "p1"} and any(d.rejected for d in first)


@pytest.mark.parametrize("bad", [{"prefill_s_per_token": 0.0}, {"decode_s_per_token": -1.0},
                                 {"block_bytes": 0}, {"transfer_bytes_per_s": 0.0}, {"prefill_base_s": -1.0}])
def test_bad_costs(bad: dict[str, float]) -> None:
    args: dict[str, float] = {"prefill_s_per_token": 0.01, "decode_s_per_token": 0.1, "block_bytes": 1000}
    args.update(bad)
    with pytest.raises(ValueError, match="conductor: "):
        Costs(**args)  # type: ignore[arg-type]


def test_bad_nodes_and_jobs() -> None:
    with pytest.raises(ValueError, match="prefill nodes"):
        Conductor(Design.KV_CXL, Policy.CACHE_AWARE, COSTS, prefill=(), decode=("d0",))
    with pytest.raises(ValueError, match="decode nodes"):
        Conductor(Design.KV_CXL, Policy.CACHE_AWARE, COSTS, prefill=("p0",), decode=("d0", "d0"))
    with pytest.raises(ValueError, match="2 blocks for 40 tokens"):
        Job("j", (1, 2), 40, 1, 16)
    with pytest.raises(ValueError, match="SLO"):
        Slo(ttft_s=0.0)
