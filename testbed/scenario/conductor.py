"""The Conductor, after Mooncake's global scheduler: place each request on a prefill node and a
decode node, weighing prefix-cache reuse against load, and reject early what cannot meet its SLO.

Pure (no I/O, no clock: everything it knows is passed in or told through place/prefilled/done),
deterministic (same calls in the same order, same decisions; ties go to the first node in the
order given) and thread-safe (one lock; the executor calls it from several threads).

The estimates, per candidate prefill node P:
  TTFT = queue(P) + prefill of the tokens not cached for P + transfers
  queue(P) = estimated prefill seconds placed on P and not yet prefilled
  TBT  = decode seconds per token, stretched when more decodes share the decode node than it
         has slots
What P can reuse depends on the design:
  colocated  nothing; prefill and decode on the same node, no transfer
  kv-net     the blocks a node computed stay on that node; P may fetch a longer cached prefix
             from another node at transfer_bytes_per_s, and hands the whole KV to the decode node
  kv-cxl     one shared pool that every node reads in place: no transfer at all"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from testbed.scenario.spec.tokentrace import TokenTrace, TraceRequest

POOL = "pool"  # the source of kv-cxl hits: the shared pool, not a node


class Design(StrEnum):
    COLOCATED = "colocated"
    KV_NET = "kv-net"
    KV_CXL = "kv-cxl"


class Policy(StrEnum):
    CACHE_AWARE = "cache-aware"  # Mooncake's: least estimated TTFT
    ROUND_ROBIN = "round-robin"  # baseline: rotate over prefill nodes and over decode nodes
    CACHE_ONLY = "cache-only"  # baseline: longest cached prefix, load ignored (ties rotate)


def _positive(what: str, value: float) -> None:
    if not (0 < value < math.inf):
        raise ValueError(f"conductor: {what} must be positive and finite, got {value}")


@dataclass(frozen=True)
class Costs:
    """The cost model, calibrated from measurements by the caller."""

    prefill_s_per_token: float  # per token computed (not cached)
    decode_s_per_token: float  # one decode step, alone on a node
    block_bytes: int  # KV bytes of one block
    transfer_bytes_per_s: float = math.inf  # kv-net's network; unused by the other designs
    prefill_base_s: float = 0.0  # per request, whatever its length

    def __post_init__(self) -> None:
        _positive("prefill_s_per_token", self.prefill_s_per_token)
        _positive("decode_s_per_token", self.decode_s_per_token)
        _positive("block_bytes", self.block_bytes)
        if not (0 < self.transfer_bytes_per_s <= math.inf):
            raise ValueError(f"conductor: transfer_bytes_per_s must be positive, got {self.transfer_bytes_per_s}")
        if not (0 <= self.prefill_base_s < math.inf):
            raise ValueError(f"conductor: prefill_base_s must be >= 0 and finite, got {self.prefill_base_s}")

    def transfer_s(self, blocks: int) -> float:
        return blocks * self.block_bytes / self.transfer_bytes_per_s


@dataclass(frozen=True)
class Slo:
    ttft_s: float | None = None  # None: no bound, never rejected for it
    tbt_s: float | None = None

    def __post_init__(self) -> None:
        for what, v in (("ttft_s", self.ttft_s), ("tbt_s", self.tbt_s)):
            if v is not None:
                _positive(f"SLO {what}", v)


@dataclass(frozen=True)
class Job:
    """One request to place: its prefix-block keys (equal keys = reusable prefix blocks)."""

    id: str
    blocks: tuple[int, ...]
    input_tokens: int
    output_tokens: int
    block_tokens: int

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.input_tokens < 1 or self.output_tokens < 1:
            raise ValueError(f"job {self.id}: block_tokens, input_tokens and output_tokens must be at least 1")
        if -(-self.input_tokens // self.block_tokens) != len(self.blocks):
            raise ValueError(f"job {self.id}: {len(self.blocks)} blocks for {self.input_tokens} tokens "
                             f"of {self.block_tokens} a block")


def job_of(trace: TokenTrace, r: TraceRequest) -> Job:
    """A request of the trace as a job, named by its line in the trace file."""
    return Job(f"line{r.line}", r.hash_ids, r.input_length, r.output_length, trace.block_tokens)


def jobs_of(trace: TokenTrace) -> tuple[Job, ...]:
    return tuple(job_of(trace, r) for r in trace.requests)


@dataclass(frozen=True)
class Decision:
    seq: int  # order of placement, unique within a Conductor
    job: str
    prefill: str  # the chosen nodes (also for a rejection: where it would have gone)
    decode: str
    hit_blocks: int  # leading blocks reused instead of computed
    source: str | None  # where the hit blocks are: the prefill node, another node (kv-net), POOL
    transfer_bytes: int  # KV bytes moved between nodes (kv-net only)
    prefill_s: float  # estimated prefill compute
    decode_s: float  # estimated decode time (output tokens x TBT)
    ttft_s: float  # predicted
    tbt_s: float  # predicted
    rejected: bool
    reason: str  # why rejected; "" if placed


@dataclass(frozen=True)
class Measured:
    """What really happened to a placed request."""

    ok: bool = True  # False: it failed, and its blocks are not cached
    stored_blocks: int | None = None  # leading blocks really stored (None: all of them)


@dataclass(frozen=True)
class NodeLoad:
    prefill_queue_s: float
    decode_load_s: float
    decoding: int  # requests placed for decoding here and not done
    cached_blocks: int  # kv-net: blocks this node holds


@dataclass(frozen=True)
class State:
    nodes: dict[str, NodeLoad]
    pool_blocks: int  # kv-cxl
    placed: int
    rejected: int
    done: int
    hit_blocks: int  # over placed requests, as predicted
    needed_blocks: int
    transfer_bytes: int


class _Blocks:
    """A set of block keys with least-recently-used eviction past a capacity."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.keys: OrderedDict[int, None] = OrderedDict()

    def prefix(self, blocks: Sequence[int]) -> int:
        k = 0
        while k < len(blocks) and blocks[k] in self.keys:
            k += 1
        return k

    def touch(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self.keys[b] = None
            self.keys.move_to_end(b)
        while self.capacity is not None and len(self.keys) > self.capacity:
            self.keys.popitem(last=False)


@dataclass(frozen=True)
class _Option:
    node: str
    hit: int
    source: str | None
    fetch_blocks: int
    prefill_s: float
    ttft_s: float


class Conductor:
    def __init__(self, design: Design, policy: Policy, costs: Costs, *, prefill: Sequence[str],
                 decode: Sequence[str] = (), slo: Slo | None = None, decode_slots: int = 1,
                 capacity_blocks: int | None = None) -> None:
        """prefill and decode name the nodes of each pool, in tie-breaking order. Colocated
        decodes where it prefills: give no decode nodes (or the same ones). decode_slots:
        decodes a node runs side by side at full speed. capacity_blocks: per node (kv-net) or for
        the pool (kv-cxl), least recently used evicted; None: unbounded."""
        design, policy = Design(design), Policy(policy)
        prefill = tuple(prefill)
        decode = tuple(decode) if design is not Design.COLOCATED or decode else prefill
        if not prefill or len(set(prefill)) != len(prefill):
            raise ValueError(f"conductor: prefill nodes must be distinct and at least one, got {prefill}")
        if not decode or len(set(decode)) != len(decode):
            raise ValueError(f"conductor: decode nodes must be distinct and at least one, got {decode}")
        if design is Design.COLOCATED and decode != prefill:
            raise ValueError("conductor: colocated decodes on its prefill node; give the same nodes or no decode nodes")
        if decode_slots < 1 or (capacity_blocks is not None and capacity_blocks < 1):
            raise ValueError("conductor: decode_slots and capacity_blocks must be at least 1")
        self.design, self.policy, self.costs = design, policy, costs
        self.slo = slo or Slo()
        self.prefill_nodes, self.decode_nodes = prefill, decode
        self.decode_slots = decode_slots
        self._lock = threading.Lock()
        self._held = {n: _Blocks(capacity_blocks) for n in prefill}  # kv-net
        self._pool = _Blocks(capacity_blocks)  # kv-cxl
        self._prefilling: dict[int, Decision] = {}  # placed, prefill not over
        self._decoding: dict[int, Decision] = {}  # placed, not done
        self._blocks: dict[int, tuple[int, ...]] = {}  # seq -> the job's blocks, until done
        self._seq = 0
        self._rr_prefill = self._rr_decode = 0
        self._placed = self._rejected = self._done = 0
        self._hits = self._needed = self._moved = 0

    # --- estimates (called with the lock held) ---

    def _queue_s(self, node: str) -> float:
        return math.fsum(d.prefill_s for d in self._prefilling.values() if d.prefill == node)

    def _decode_load(self, node: str) -> tuple[float, int]:
        ds = [d.decode_s for d in self._decoding.values() if d.decode == node]
        return math.fsum(ds), len(ds)

    def _prefill_s(self, job: Job, hit: int) -> float:
        # At least the last token is computed, for the first token's logits.
        todo = max(1, job.input_tokens - hit * job.block_tokens)
        return self.costs.prefill_base_s + todo * self.costs.prefill_s_per_token

    def _option(self, job: Job, node: str, handoff_s: float) -> _Option:
        """The best way to prefill job on node: which cached prefix to use, and its TTFT."""
        queue = self._queue_s(node)
        best = _Option(node, 0, None, 0, self._prefill_s(job, 0), 0.0)
        cost = best.prefill_s
        if self.design is Design.KV_CXL:
            hit = self._pool.prefix(job.blocks)
            if hit:
                best = _Option(node, hit, POOL, 0, self._prefill_s(job, hit), 0.0)
                cost = best.prefill_s
        elif self.design is Design.KV_NET:
            # Local first, then the others in order: a remote prefix must be strictly cheaper.
            for src in (node, *(n for n in self.prefill_nodes if n != node)):
                hit = self._held[src].prefix(job.blocks)
                if not hit:
                    continue
                fetch = 0 if src == node else hit
                pre = self._prefill_s(job, hit)
                if pre + self.costs.transfer_s(fetch) < cost:
                    best = _Option(node, hit, src, fetch, pre, 0.0)
                    cost = pre + self.costs.transfer_s(fetch)
        return _Option(node, best.hit, best.source, best.fetch_blocks, best.prefill_s, queue + cost + handoff_s)

    def _tbt_s(self, decoding: int) -> float:
        return self.costs.decode_s_per_token * max(1.0, (decoding + 1) / self.decode_slots)

    def _pick_decode(self) -> str:
        if self.policy is Policy.ROUND_ROBIN:
            node = self.decode_nodes[self._rr_decode % len(self.decode_nodes)]
            self._rr_decode += 1
            return node
        return min(self.decode_nodes, key=lambda n: (self._decode_load(n), self.decode_nodes.index(n)))

    def _rotate_among(self, nodes: Sequence[str]) -> str:
        """The first of nodes at or after the round-robin pointer, which then moves past it."""
        n = len(self.prefill_nodes)
        for step in range(n):
            cand = self.prefill_nodes[(self._rr_prefill + step) % n]
            if cand in nodes:
                self._rr_prefill += step + 1
                return cand
        raise AssertionError("no candidate")  # nodes is a non-empty subset of prefill_nodes

    def _choose(self, job: Job) -> tuple[_Option, str]:
        if self.design is Design.COLOCATED:
            if self.policy is Policy.CACHE_AWARE:
                opts = [self._option(job, n, 0.0) for n in self.prefill_nodes]
                # Equal TTFT: the node decoding less (it decodes this one too); then the first.
                chosen = min(opts, key=lambda o: (o.ttft_s, self._decode_load(o.node)))
            else:  # nothing is ever cached, so cache-only rotates too
                chosen = self._option(job, self._rotate_among(self.prefill_nodes), 0.0)
            return chosen, chosen.node
        decode = self._pick_decode()
        opts = []
        for n in self.prefill_nodes:
            handoff = self.costs.transfer_s(len(job.blocks)) if self.design is Design.KV_NET and n != decode else 0.0
            opts.append(self._option(job, n, handoff))
        if self.policy is Policy.CACHE_AWARE:
            return min(opts, key=lambda o: o.ttft_s), decode
        if self.policy is Policy.ROUND_ROBIN:
            return opts[self.prefill_nodes.index(self._rotate_among(self.prefill_nodes))], decode
        # cache-only: the longest prefix the node itself holds (kv-net) or sees (kv-cxl)
        if self.design is Design.KV_NET:
            local = {n: self._held[n].prefix(job.blocks) for n in self.prefill_nodes}
        else:  # kv-cxl: the pool, the same from every node
            local = {o.node: o.hit for o in opts}
        most = max(local.values())
        node = self._rotate_among([n for n in self.prefill_nodes if local[n] == most])
        return opts[self.prefill_nodes.index(node)], decode

    # --- the interface ---

    def place(self, job: Job) -> Decision:
        """Where job goes, with what it reuses and the predicted TTFT/TBT; or its early rejection.
        A placed job counts on its nodes' queues until prefilled/done."""
        with self._lock:
            chosen, decode = self._choose(job)
            _, decoding = self._decode_load(decode)
            tbt = self._tbt_s(decoding)
            handoff = len(job.blocks) if self.design is Design.KV_NET and chosen.node != decode else 0
            why = []
            if self.slo.ttft_s is not None and chosen.ttft_s > self.slo.ttft_s:
                why.append(f"predicted TTFT {chosen.ttft_s:.3f} s > SLO {self.slo.ttft_s:.3f} s")
            if self.slo.tbt_s is not None and tbt > self.slo.tbt_s:
                why.append(f"predicted TBT {tbt:.3f} s > SLO {self.slo.tbt_s:.3f} s")
            d = Decision(self._seq, job.id, chosen.node, decode, chosen.hit, chosen.source,
                         (chosen.fetch_blocks + handoff) * self.costs.block_bytes, chosen.prefill_s,
                         job.output_tokens * tbt, chosen.ttft_s, tbt, bool(why), "; ".join(why))
            self._seq += 1
            if d.rejected:
                self._rejected += 1
                return d
            self._placed += 1
            self._hits += d.hit_blocks
            self._needed += len(job.blocks)
            self._moved += d.transfer_bytes
            self._prefilling[d.seq] = d
            self._decoding[d.seq] = d
            self._blocks[d.seq] = job.blocks
            if d.source == POOL:
                self._pool.touch(job.blocks[: d.hit_blocks])  # in use: last to be evicted
            elif d.source is not None:
                self._held[d.source].touch(job.blocks[: d.hit_blocks])
            return d

    def prefilled(self, decision: Decision, stored_blocks: int | None = None) -> None:
        """The prefill of a placed decision is over: its node's queue drops, and its first
        stored_blocks blocks (None: all) are cached where the design keeps them."""
        with self._lock:
            self._prefilled(decision, stored_blocks)

    def _prefilled(self, decision: Decision, stored_blocks: int | None) -> None:
        if decision.rejected:
            return
        if self._prefilling.pop(decision.seq, None) is None:
            if decision.seq in self._decoding:
                raise ValueError(f"conductor: decision {decision.seq} ({decision.job}) already prefilled")
            raise ValueError(f"conductor: decision {decision.seq} ({decision.job}) is not outstanding")
        blocks = self._blocks[decision.seq]
        n = len(blocks) if stored_blocks is None else stored_blocks
        if not 0 <= n <= len(blocks):
            raise ValueError(f"conductor: stored_blocks {stored_blocks} not in 0..{len(blocks)}")
        if self.design is Design.KV_CXL:
            self._pool.touch(blocks[:n])
        elif self.design is Design.KV_NET:
            self._held[decision.prefill].touch(blocks[:n])

    def done(self, decision: Decision, measured: Measured) -> None:
        """A placed decision finished (or failed): its decode load goes, and, if prefilled was
        not called, its prefill queue too, caching what measured says was stored. A rejected
        decision is ignored; finishing one twice is an error."""
        with self._lock:
            if decision.rejected:
                return
            if decision.seq not in self._decoding:
                raise ValueError(f"conductor: decision {decision.seq} ({decision.job}) is not outstanding")
            if decision.seq in self._prefilling:
                self._prefilled(decision, measured.stored_blocks if measured.ok else 0)
            del self._decoding[decision.seq]
            del self._blocks[decision.seq]
            self._done += 1

    def state(self) -> State:
        with self._lock:
            nodes = {}
            for n in dict.fromkeys((*self.prefill_nodes, *self.decode_nodes)):
                load, decoding = self._decode_load(n)
                held = len(self._held[n].keys) if n in self._held else 0
                nodes[n] = NodeLoad(self._queue_s(n), load, decoding, held)
            return State(nodes, len(self._pool.keys), self._placed, self._rejected, self._done,
                         self._hits, self._needed, self._moved)
