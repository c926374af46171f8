"""Workload kind `kv`: Mooncake's KVCache-centric serving on the `llm` model, replayed from a
Mooncake-format trace (`kv.*` agent ops). Actions:
  format  this node's arena of the MHD's KV block pool (a set-up step on every node).
  serve   (default) one request of the trace per invocation: the arrival is a Mooncake trace
          (pattern: trace), whose event r<i> is request i of `trace`. Its tokens are synthesised
          from its hash ids (equal ids, equal tokens), scaled to `block_tokens` a block. The
          Conductor (testbed.scenario.conductor) picks the prefill and the decode node by
          `policy`, or rejects the request early against the SLOs; the prefill node computes the
          first token, the decode node the rest, by `design`:
            colocated  prefill and decode on one node (every node serves), nothing reused or moved
            kv-net     the prefill node sends its KV cache over TCP to the decode node (no reuse
                       across requests: Mooncake's pool of nodes' DRAM is not built here)
            kv-cxl     the MHD's shared pool: the prefill reuses the longest cached prefix that
                       any node put there, publishes the new blocks; the decode reads them in place
Figures per invocation: ttft_ms (the invocation's start to the first token, seen from the host:
queueing behind other requests on the node included), tbt_ms (the decode node's median time
between tokens), prefill_ms (the node's own), hit_rate (blocks reused / full blocks) and
blocks_hit, prefill_saved (share of the prompt not computed), bytes_net (KV bytes between
nodes), rejected (1: refused by the Conductor), slo_ok, predicted_ttft_ms, tokens_crc.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from tbproto import llmops
from tbproto.codec import ProtocolError
from tbproto.jsontypes import Json, JsonObject

from testbed.access.agent import Exchanger
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping
from testbed.scenario import conductor as cond
from testbed.scenario.kinds.base import Kind, Outcome, Target, agent_session, substitute
from testbed.scenario.kinds.fields import Refused, call, parse_common, resolve
from testbed.scenario.kinds.llm import crc_of
from testbed.scenario.spec import arrivals, tokentrace
from testbed.scenario.spec.fields import trace_path

DESIGNS = tuple(d.value for d in llmops.KvDesign)
POLICIES = tuple(p.value for p in cond.Policy)
# (layers, dim) of the llm presets (guest-agent/tbagent/functions/llm.py; a unit test checks they
# agree): a block's KV is 2 x layers x dim x 4 bytes a token.
PRESET_SHAPES = {"tiny": (2, 32), "ci": (4, 256), "small": (8, 512), "base": (12, 768)}
MAX_BLOCK_TOKENS = 512


class KvAction(StrEnum):
    SERVE = "serve"
    FORMAT = "format"


@dataclass(frozen=True)
class KvSpec:
    action: KvAction = KvAction.SERVE
    design: str | None = None  # serve: colocated | kv-net | kv-cxl, or ${design}
    trace: str | None = None  # serve: a Mooncake-format file, relative to the scenario
    preset: str = "ci"
    mhd: str = "mhd0"
    block_tokens: int = 16  # the scaled block (Mooncake's is 512 tokens)
    max_blocks: int | None = None  # keep a prompt's first blocks only (the model's context)
    max_output: int | None = 8  # output tokens at most
    token_seed: int = 0
    prefill: Json = None  # serve: the prefill nodes (colocated: every node of prefill and decode)
    decode: Json = None  # serve: the decode nodes
    policy: str = "cache-aware"  # cache-aware | round-robin | cache-only, or ${policy}
    slo_ttft_ms: float | None = None
    slo_tbt_ms: float | None = None
    prefill_ms_per_token: float = 50.0  # the Conductor's cost model, calibrated by the scenario
    decode_ms_per_token: float = 100.0
    net_mbps: float | None = None  # kv-net's bandwidth for the Conductor (None: unbounded)
    slots: int | None = None  # format: block slots in this head's arena


KV_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "serve": (("design", "trace", "prefill", "decode"),
              ("preset", "mhd", "block_tokens", "max_blocks", "max_output", "token_seed", "policy", "slo_ttft_ms",
               "slo_tbt_ms", "prefill_ms_per_token", "decode_ms_per_token", "net_mbps")),
    "format": ((), ("preset", "mhd", "block_tokens", "slots")),
}


def block_bytes(preset: str, block_tokens: int) -> int:
    layers, dim = PRESET_SHAPES[preset]
    return 2 * layers * dim * 4 * block_tokens


class KvKind(Kind[KvSpec, Exchanger]):
    """Mooncake's disaggregated serving over the nodes' agents (see the module's docstring)."""

    name = "kv"
    spec_type = KvSpec

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.targets: Mapping[str, Target] = {}
        self.addresses: Mapping[str, str] = {}
        self.traces: dict[tuple[str, int, int | None, int | None], tokentrace.TokenTrace] = {}
        self.conductors: dict[tuple[object, ...], cond.Conductor] = {}

    def attach(self, targets: Mapping[str, Target], addresses: Mapping[str, str]) -> None:
        with self.lock:
            self.targets, self.addresses = dict(targets), dict(addresses)
            self.conductors = {}  # a new run starts with empty queues and caches

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> KvSpec:
        spec: KvSpec = from_mapping(doc, KvSpec, raw, kp)
        parse_common(doc, kp, raw, str(spec.action), KV_KEYS, ("action",))
        if spec.preset not in PRESET_SHAPES:
            raise doc.error((*kp, "preset"), f"expected one of {', '.join(PRESET_SHAPES)}, got {spec.preset!r}")
        if not 1 <= spec.block_tokens <= MAX_BLOCK_TOKENS:
            raise doc.error((*kp, "block_tokens"), f"must be from 1 to {MAX_BLOCK_TOKENS}, got {spec.block_tokens}")
        if spec.action is KvAction.FORMAT:
            return spec
        if spec.design is not None and "${" not in spec.design and spec.design not in DESIGNS:
            raise doc.error((*kp, "design"), f"expected one of {', '.join(DESIGNS)}, got {spec.design!r}")
        if "${" not in spec.policy and spec.policy not in POLICIES:
            raise doc.error((*kp, "policy"), f"expected one of {', '.join(POLICIES)}, got {spec.policy!r}")
        for key in ("prefill", "decode"):
            nodes = getattr(spec, key)
            if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
                raise doc.error((*kp, key), "expected a non-empty list of node names")
        assert spec.trace is not None
        # the arrival's rule: a trace lies in the scenario's folder or below it
        path = trace_path(doc, (*kp, "trace"), spec.trace, Path(doc.path).parent)
        try:
            self._trace(str(path), spec)  # read now: a bad trace is an error before anything runs
        except ValueError as exc:  # a scale the trace cannot take (ConfigErrors name their own line)
            raise doc.error((*kp, "trace"), str(exc)) from None
        return replace(spec, trace=str(path))

    def _trace(self, path: str, spec: KvSpec) -> tokentrace.TokenTrace:
        key = (path, spec.block_tokens, spec.max_blocks, spec.max_output)
        with self.lock:
            if key not in self.traces:
                full = tokentrace.load_mooncake(path)
                self.traces[key] = tokentrace.scale(full, tokentrace.Scale(
                    block_tokens=spec.block_tokens, max_output=spec.max_output, max_blocks=spec.max_blocks))
            return self.traces[key]

    def templates(self, spec: KvSpec) -> Iterator[tuple[KeyPath, str]]:
        if isinstance(spec.design, str):
            yield ("design",), spec.design
        yield ("policy",), spec.policy

    def check(self, spec: KvSpec, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        if spec.design is not None and "${" in spec.design:
            design = resolve(spec.design, values)
            if design is not None and design not in DESIGNS:
                yield ("design",), f"design {design!r} is not one of {', '.join(DESIGNS)} (from {spec.design})"
        if "${" in spec.policy:
            policy = resolve(spec.policy, values)
            if policy is not None and policy not in POLICIES:
                yield ("policy",), f"policy {policy!r} is not one of {', '.join(POLICIES)} (from {spec.policy})"

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Exchanger]:
        return agent_session(target, timeout)

    def _conductor(self, spec: KvSpec, design: str, values: Mapping[str, object]) -> cond.Conductor:
        policy = substitute(spec.policy, values)
        key = (values.get("mode"), values.get("workload"), values.get("rep"), design, policy)
        assert isinstance(spec.prefill, list) and isinstance(spec.decode, list)
        with self.lock:
            if key not in self.conductors:
                prefill, decode = [str(n) for n in spec.prefill], [str(n) for n in spec.decode]
                if design == llmops.KvDesign.COLOCATED:  # every node prefills and decodes its own
                    prefill, decode = list(dict.fromkeys([*prefill, *decode])), []
                costs = cond.Costs(spec.prefill_ms_per_token / 1e3, spec.decode_ms_per_token / 1e3,
                                   block_bytes(spec.preset, spec.block_tokens),
                                   spec.net_mbps * 1e6 if spec.net_mbps else float("inf"))
                slo = cond.Slo(spec.slo_ttft_ms / 1e3 if spec.slo_ttft_ms else None,
                               spec.slo_tbt_ms / 1e3 if spec.slo_tbt_ms else None)
                self.conductors[key] = cond.Conductor(cond.Design(design), cond.Policy(policy), costs,
                                                      prefill=prefill, decode=decode, slo=slo)
            return self.conductors[key]

    def _agent(self, node: str) -> Target:
        with self.lock:
            target = self.targets.get(node)
        if target is None:
            raise Refused(f"no node {node!r} in this testbed", 0.0)
        return target

    def invoke(self, session: Exchanger, spec: KvSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        if spec.action is KvAction.FORMAT:
            try:
                answer = call(session, llmops.KvFormat(spec.mhd, spec.preset, spec.block_tokens, spec.slots), timeout)
            except Refused as exc:
                return Outcome(False, exc.ms, error=str(exc))
            result = answer.result if isinstance(answer.result, dict) else {}
            return Outcome(True, answer.ms, result=result, guest_ms=answer.agent_ms)
        assert spec.design is not None and spec.trace is not None
        design = substitute(spec.design, values)
        if design not in DESIGNS:
            return Outcome(False, 0.0, error=f"design {design!r} is not one of {', '.join(DESIGNS)}")
        event = str(values.get("function", ""))
        trace = self._trace(spec.trace, spec)
        try:
            index = int(event.removeprefix(arrivals.MOONCAKE_NAME.format("")))
            req = trace.requests[index]
        except (ValueError, IndexError):
            return Outcome(False, 0.0, error=f"event {event!r} is no request of {spec.trace} (the arrival must be "
                                             "a trace pattern over the same file)")
        return self._serve(spec, design, values, trace, req, timeout)

    def _serve(self, spec: KvSpec, design: str, values: Mapping[str, object], trace: tokentrace.TokenTrace,
               req: tokentrace.TraceRequest, timeout: float) -> Outcome:
        conductor = self._conductor(spec, design, values)
        job = cond.job_of(trace, req)
        tokens = tokentrace.prompt_tokens(trace, req, spec.token_seed)
        decision = conductor.place(job)
        base: JsonObject = {"request": req.line, "prefill_node": decision.prefill, "decode_node": decision.decode,
                            "predicted_ttft_ms": decision.ttft_s * 1e3, "input_tokens": len(tokens)}
        if decision.rejected:
            return Outcome(True, 0.0, result={**base, "rejected": 1, "slo_ok": 0, "reason": decision.reason})
        kd, n = llmops.KvDesign(design), max(1, req.output_length - 1)
        t0 = time.perf_counter()
        try:
            with self._agent(decision.prefill).agent(timeout) as p_agent:
                bind = self.addresses.get(decision.prefill) if kd is llmops.KvDesign.KV_NET else None
                pre = call(p_agent, llmops.KvPrefill(kd, spec.mhd, spec.preset, tuple(tokens), spec.block_tokens,
                                                     n if kd is llmops.KvDesign.COLOCATED else None, bind), timeout)
            ttft_ms = (time.perf_counter() - t0) * 1e3
            p = pre.result
            assert isinstance(p, llmops.KvPrefillReply)
            conductor.prefilled(decision, p.blocks_hit + p.blocks_put)
            if kd is llmops.KvDesign.COLOCATED:
                decoded, tbt_s, bytes_net = list(p.decoded), p.tbt_s, 0
            else:
                with self._agent(decision.decode).agent(timeout) as d_agent:
                    dec = call(d_agent, llmops.KvDecode(kd, spec.mhd, spec.preset, (*tokens, p.first), n,
                                                        spec.block_tokens, p.keys or None, p.handle), timeout)
                d = dec.result
                assert isinstance(d, llmops.KvDecodeReply)
                decoded, tbt_s, bytes_net = list(d.tokens), d.tbt_s, d.bytes_net
        except (Refused, ProtocolError) as exc:
            conductor.done(decision, cond.Measured(ok=False))
            return Outcome(False, getattr(exc, "ms", 0.0), error=str(exc), result=base)
        conductor.done(decision, cond.Measured(ok=True))
        ms = (time.perf_counter() - t0) * 1e3
        tbt_ms = tbt_s * 1e3 if tbt_s is not None else None
        slo_ok = (spec.slo_ttft_ms is None or ttft_ms <= spec.slo_ttft_ms) and (
            spec.slo_tbt_ms is None or tbt_ms is None or tbt_ms <= spec.slo_tbt_ms)
        result: JsonObject = {
            **base, "rejected": 0, "slo_ok": 1 if slo_ok else 0, "ttft_ms": ttft_ms, "prefill_ms": p.prefill_s * 1e3,
            "blocks": p.blocks, "blocks_hit": p.blocks_hit, "hit_rate": p.blocks_hit / p.blocks if p.blocks else 0.0,
            "prefill_saved": 1 - p.tokens_computed / len(tokens), "bytes_net": bytes_net,
            "tokens": [p.first, *decoded], "tokens_crc": crc_of((p.first, *decoded))}
        if tbt_ms is not None:
            result["tbt_ms"] = tbt_ms
        return Outcome(True, ms, None, None, result)
