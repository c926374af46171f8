"""Workload kind `llm`: ServerlessLLM's questions on the node's agent (`model.*` and `llm.*` ops).
Actions:
  put   publish the checkpoint of an `llm` preset into the MHD once ("persist once"): a set-up
        step on one node; a model already there is not written again.
  disk  write the node's local-disk copy of a stored model (the `disk` loader's source).
  run   (default) start `instances` inference instances at once on the node, each its own
        process: load the model with `loader` (disk, cxl-copy, cxl-map), then generate
        `max_tokens` tokens from `prompt` ("load many").
  migrate  live migration of a generation from the invocation's node (A) to node `to` (B): A
        prefills a prompt made up to `context` tokens and generates `generated`, then hands over
        by `method` (tokens: B recomputes the KV cache; kv-net: the cache over TCP; kv-cxl: the
        cache left in the MHD, mapped by B); B goes on for `tokens` tokens. Figures: downtime_ms
        (A's export + B's import + B's first token, measured on the nodes), its parts,
        downtime_tokens (the downtime in B's token times), bytes_net (over the node network),
        bytes_kv, relay_ms (the handle's trip through the host: testbed overhead, apart), and
        tokens_crc of B's continuation (every method must give the same).
  place  ServerlessLLM's placement question: invocation i asks for model models[i % n], whose
        checkpoint is in the DRAM tier (page cache) of its home node only (`homes`); `route`
        locality sends it there, random to a node drawn from the homes' nodes (seeded by the
        run's seed and i). It then runs like `run` (one instance) on that node; with the disk
        loader a node that is not the model's home reads it cold (its pages dropped first),
        the home reads it from DRAM. With cxl-map every node reads the one copy in the MHD.
        Figures as run's, and local (1: sent to the home node).
A run's figures are medians over its instances: load_ms, first_token_ms (from the weights being
ready to the first token; a cxl-map instance's first touch of the weights lands here), ttft_ms
(load + first token: what a request that starts a cold instance waits, ServerlessLLM's time to
first token), tokens_per_s, and memory per instance
(pss_local_kib_per_instance, rss_cxl_kib_per_instance). tokens_crc is the CRC-32 of the tokens,
the same number for the same answer, so assertions can compare answers across loaders and nodes;
instances of one run that disagree fail the invocation.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum

from tbproto import ops as proto
from tbproto.codec import ProtocolError
from tbproto.jsontypes import Json, JsonObject

from testbed.access.agent import Exchanger
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping
from testbed.scenario.kinds.base import Kind, Outcome, Target, agent_session, substitute, substitute_value
from testbed.scenario.kinds.fields import Refused, as_int, call, parse_common, resolve

LOADERS = tuple(loader.value for loader in proto.Loader)
MAX_INSTANCES = 64
MAX_TOKENS = 4096


class LlmAction(StrEnum):
    RUN = "run"
    PUT = "put"
    DISK = "disk"
    MIGRATE = "migrate"
    PLACE = "place"


class Route(StrEnum):
    LOCALITY = "locality"
    RANDOM = "random"


ROUTES = tuple(r.value for r in Route)


METHODS = tuple(m.value for m in proto.MigrateMethod)


@dataclass(frozen=True)
class LlmSpec:
    action: LlmAction = LlmAction.RUN
    model: str | None = None  # the model's name in the store
    mhd: str = "mhd0"
    preset: str | None = None  # put: an `llm` preset (tiny, ci, small, base)
    dtype: str | None = None  # put: float32 or float16
    seed: int | None = None  # put: the weights' seed
    loader: str | None = None  # run: disk | cxl-copy | cxl-map, or ${loader}
    instances: int | str | None = None  # run: instances started at once (default 1), or ${n}
    prompt: str | None = None  # run, migrate
    max_tokens: int | None = None  # run
    to: str | None = None  # migrate: the destination node
    method: str | None = None  # migrate: tokens | kv-net | kv-cxl, or ${method}
    context: int | str | None = None  # migrate: tokens of context at the hand-over, or ${context}
    generated: int | None = None  # migrate: tokens A generates before it pauses
    tokens: int | None = None  # migrate: tokens B generates after the hand-over
    models: Json = None  # place: the models asked for in turn
    homes: Json = None  # place: model -> the node whose DRAM tier holds its checkpoint
    route: str | None = None  # place: locality | random, or ${route}


LLM_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "run": (("model", "loader", "prompt", "max_tokens"), ("mhd", "instances")),
    "put": (("model", "preset"), ("mhd", "dtype", "seed")),
    "disk": (("model",), ("mhd",)),
    "migrate": (("to", "method", "preset", "prompt", "context", "generated", "tokens"), ("mhd", "dtype", "seed")),
    "place": (("models", "homes", "route", "loader", "prompt", "max_tokens"), ("mhd",)),
}


def problem(what: str, value: object) -> str | None:
    """Why `value` cannot be the `what` of an llm spec, or None."""
    if what == "loader" and value not in LOADERS:
        return f"loader {value!r} is not one of {', '.join(LOADERS)}"
    if what == "instances":
        n = as_int(value)
        if n is None or not 1 <= n <= MAX_INSTANCES:
            return f"instances must be an integer from 1 to {MAX_INSTANCES}, got {value!r}"
    if what == "route" and value not in ROUTES:
        return f"route {value!r} is not one of {', '.join(ROUTES)}"
    if what == "method" and value not in METHODS:
        return f"method {value!r} is not one of {', '.join(METHODS)}"
    if what == "context":
        n = as_int(value)
        if n is None or not 1 <= n <= MAX_TOKENS:
            return f"context must be an integer from 1 to {MAX_TOKENS}, got {value!r}"
    return None


def crc_of(tokens: tuple[int, ...]) -> int:
    return zlib.crc32(",".join(map(str, tokens)).encode())


def run_result(reply: proto.LlmRunReply) -> tuple[bool, str | None, JsonObject]:
    """llm.run's reply -> (ok, error, result): medians over the instances, and each instance."""
    insts = reply.instances
    failed = [i for i in insts if not i.ok]
    res: JsonObject = {"instances": len(insts), "wall_ms": reply.wall_s * 1e3,
                       "per_instance": [{"load_ms": _ms(i.load_s), "first_token_ms": _ms(i.ttft_s),
                                         "tokens_per_s": i.tokens_per_s, "pss_local_kib": i.pss_local_kib,
                                         "rss_cxl_kib": i.rss_cxl_kib, "bytes_copied": i.bytes_copied,
                                         "error": i.error} for i in insts]}

    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(statistics.median(known)) if known else None

    good = [i for i in insts if i.ok]
    for key, values in (
        ("load_ms", [_ms(i.load_s) for i in good]),
        ("first_token_ms", [_ms(i.ttft_s) for i in good]),
        ("ttft_ms", [(i.load_s + i.ttft_s) * 1e3 if i.load_s is not None and i.ttft_s is not None
                     else None for i in good]),
        ("tokens_per_s", [i.tokens_per_s for i in good]),
        ("pss_local_kib_per_instance", [i.pss_local_kib for i in good]),
        ("rss_cxl_kib_per_instance", [i.rss_cxl_kib for i in good]),
        ("bytes_copied", [float(i.bytes_copied) if i.bytes_copied is not None else None for i in good]),
    ):
        if (m := med(values)) is not None:
            res[key] = m
    answers = {i.tokens for i in good}
    if good:
        res["tokens"] = list(good[0].tokens)
        res["text"] = good[0].text
        res["tokens_crc"] = crc_of(good[0].tokens)
        res["tokens_agree"] = 1 if len(answers) == 1 else 0
    if failed:
        return False, f"{len(failed)} of {len(insts)} instances failed: {failed[0].error}", res
    if not insts:
        return False, "the agent started no instance", res
    if len(answers) > 1:
        return False, f"the {len(insts)} instances gave {len(answers)} different answers", res
    return True, None, res


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


class LlmKind(Kind[LlmSpec, Exchanger]):
    """Checkpoints in the MHD and inference instances on the node (see the module's docstring)."""

    name = "llm"
    spec_type = LlmSpec
    CHECKED = ("loader", "instances", "method", "context", "route")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.targets: Mapping[str, Target] = {}
        self.addresses: Mapping[str, str] = {}

    def attach(self, targets: Mapping[str, Target], addresses: Mapping[str, str]) -> None:
        with self.lock:
            self.targets, self.addresses = dict(targets), dict(addresses)

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> LlmSpec:
        spec: LlmSpec = from_mapping(doc, LlmSpec, raw, kp)
        parse_common(doc, kp, raw, str(spec.action), LLM_KEYS, ("action",))
        for what in self.CHECKED:
            value = getattr(spec, what)
            if value is not None and not (isinstance(value, str) and "${" in value):
                if (found := problem(what, value)) is not None:
                    raise doc.error((*kp, what), found)
        if spec.max_tokens is not None and not 1 <= spec.max_tokens <= MAX_TOKENS:
            raise doc.error((*kp, "max_tokens"), f"must be from 1 to {MAX_TOKENS}, got {spec.max_tokens}")
        if spec.dtype is not None and spec.dtype not in ("float16", "float32"):
            raise doc.error((*kp, "dtype"), f"expected float16 or float32, got {spec.dtype!r}")
        if spec.action is LlmAction.PLACE:
            models = spec.models
            if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
                raise doc.error((*kp, "models"), "expected a non-empty list of model names")
            homes = spec.homes
            if not isinstance(homes, dict) or not all(isinstance(v, str) for v in homes.values()):
                raise doc.error((*kp, "homes"), "expected a mapping of model name to node name")
            for m in models:
                if m not in homes:
                    raise doc.error((*kp, "homes"), f"model {m!r} has no home node")
        return spec

    def templates(self, spec: LlmSpec) -> Iterator[tuple[KeyPath, str]]:
        for key in ("model", "loader", "instances", "prompt", "preset", "method", "context", "to"):
            if isinstance(getattr(spec, key), str):
                yield (key,), getattr(spec, key)

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Exchanger]:
        return agent_session(target, timeout)

    def check(self, spec: LlmSpec, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        for what in self.CHECKED:
            raw = getattr(spec, what)
            if not isinstance(raw, str) or "${" not in raw:
                continue
            value = resolve(raw, values)
            if value is not None and (found := problem(what, value)) is not None:
                yield (what,), f"{found} (from {raw})"

    def request(self, spec: LlmSpec, values: Mapping[str, object]) -> object | str:
        """The agent request (a tbproto type) for this step or invocation, or why there is none."""
        if spec.action is LlmAction.MIGRATE:
            return self._migrate_out(spec, values)
        if spec.action is LlmAction.PLACE:
            return self._place(spec, values)[1]
        assert spec.model is not None
        model = substitute(spec.model, values)
        if spec.action is LlmAction.PUT:
            assert spec.preset is not None
            return proto.ModelPut(spec.mhd, model, substitute(spec.preset, values), spec.dtype, spec.seed)
        if spec.action is LlmAction.DISK:
            return proto.ModelDisk(spec.mhd, model)
        assert spec.loader is not None and spec.prompt is not None and spec.max_tokens is not None
        loader = substitute(spec.loader, values)
        instances: Json = substitute_value(spec.instances, values) if spec.instances is not None else 1
        for what, value in (("loader", loader), ("instances", instances)):
            if (found := problem(what, value)) is not None:
                return found
        n = as_int(instances)
        assert n is not None
        return proto.LlmRun(model, spec.mhd, proto.Loader(loader), substitute(spec.prompt, values),
                            spec.max_tokens, n)

    def _place(self, spec: LlmSpec, values: Mapping[str, object]) -> tuple[str, proto.LlmRun | str, bool]:
        """(the node the request goes to, its request or why there is none, whether it is the home)."""
        assert isinstance(spec.models, list) and isinstance(spec.homes, dict)
        assert spec.route is not None and spec.loader is not None and spec.prompt is not None
        assert spec.max_tokens is not None
        route, loader = substitute(spec.route, values), substitute(spec.loader, values)
        for what, value in (("route", route), ("loader", loader)):
            if (found := problem(what, value)) is not None:
                return "", found, False
        seq = as_int(values.get("seq", 0)) or 0
        model = str(spec.models[seq % len(spec.models)])
        home = str(spec.homes[model])
        if route == Route.LOCALITY:
            node = home
        else:  # the same draw for the same run seed and invocation, whatever else runs
            nodes = sorted({str(n) for n in spec.homes.values()})
            rng = random.Random(f"{values.get('seed', 0)}/{values.get('rep', 0)}/{seq}")
            node = rng.choice(nodes)
        drop = "none" if node == home else "file"  # only the home's DRAM tier holds the checkpoint
        return node, proto.LlmRun(model, spec.mhd, proto.Loader(loader), substitute(spec.prompt, values),
                                  spec.max_tokens, 1, drop), node == home

    def _routed(self, spec: LlmSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        node, req, local = self._place(spec, values)
        if isinstance(req, str):
            return Outcome(False, 0.0, error=req)
        with self.lock:
            target = self.targets.get(node)
        if target is None:
            return Outcome(False, 0.0, error=f"no node {node!r} to place on")
        try:
            with target.agent(timeout) as agent:
                answer = call(agent, req, timeout)
        except Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        except ProtocolError as exc:
            return Outcome(False, 0.0, error=f"the agent's reply: {exc}")
        assert isinstance(answer.result, proto.LlmRunReply)
        ok, error, result = run_result(answer.result)
        result |= {"model": req.model, "routed_to": node, "local": 1 if local else 0}
        return Outcome(ok, answer.ms, answer.agent_ms, None, result, error, guest_ms=answer.agent_ms)

    def _migrate_out(self, spec: LlmSpec, values: Mapping[str, object]) -> proto.LlmMigrateOut | str:
        assert spec.method is not None and spec.preset is not None and spec.prompt is not None
        assert spec.context is not None and spec.generated is not None
        method = substitute(spec.method, values)
        context = substitute_value(spec.context, values)
        for what, value in (("method", method), ("context", context)):
            if (found := problem(what, value)) is not None:
                return found
        n = as_int(context)
        assert n is not None
        bind = None
        if method == proto.MigrateMethod.KV_NET:
            node = str(values.get("node", ""))
            with self.lock:
                bind = self.addresses.get(node)
            if bind is None:
                return f"no address of node {node!r} on the node network for kv-net"
        return proto.LlmMigrateOut(proto.MigrateMethod(method), substitute(spec.preset, values),
                                   substitute(spec.prompt, values), n, spec.generated, spec.mhd, bind,
                                   spec.dtype, spec.seed)

    def _migrate(self, session: Exchanger, spec: LlmSpec, req: proto.LlmMigrateOut, timeout: float) -> Outcome:
        assert spec.to is not None and spec.tokens is not None
        with self.lock:
            target = self.targets.get(spec.to)
        if target is None:
            return Outcome(False, 0.0, error=f"no node {spec.to!r} to migrate to")
        t0 = time.perf_counter()
        try:
            out = call(session, req, timeout)
            if not isinstance(out.result, dict):
                return Outcome(False, out.ms, error="llm.migrate_out answered no handle")
            handle: JsonObject = out.result
            relay0 = time.perf_counter()
            with target.agent(timeout) as peer:
                relay = (time.perf_counter() - relay0) * 1e3
                got = call(peer, proto.LlmMigrateIn(req.method, handle, req.preset, spec.tokens, req.mhd,
                                                    req.dtype, req.seed), timeout)
            sent: Json = None
            if req.method is proto.MigrateMethod.KV_NET:  # the sender's own outcome, never lost
                sent = call(session, proto.LlmMigrateStatus(str(handle.get("id", "")), 30.0), timeout).result
        except Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        except ProtocolError as exc:
            return Outcome(False, 0.0, error=f"the agent's reply: {exc}")
        ms = (time.perf_counter() - t0) * 1e3
        r = got.result
        assert isinstance(r, proto.LlmMigrateInReply)
        timings = handle.get("timings") if isinstance(handle.get("timings"), dict) else {}
        assert isinstance(timings, dict)
        result: JsonObject = {
            "method": str(req.method), "context": req.context, "downtime_ms": r.downtime.total_s * 1e3,
            "export_ms": r.downtime.export_s * 1e3, "import_ms": r.downtime.import_s * 1e3,
            "first_token_ms": r.downtime.first_token_s * 1e3, "downtime_tokens": r.downtime_tokens,
            "token_gap_ms": _ms(r.token_gap_s), "relay_ms": relay,
            "bytes_net": r.bytes.get("net", 0), "bytes_kv": r.bytes.get("kv", 0),
            "bytes_cxl_read": r.bytes.get("cxl_read", 0), "tokens": list(r.tokens), "tokens_crc": crc_of(r.tokens),
            "source_prefill_ms": _ms(timings.get("prefill_s") if isinstance(timings.get("prefill_s"), float) else None)}
        if sent is not None:
            result["sender"] = sent
            if not isinstance(sent, dict) or sent.get("state") != "sent":
                return Outcome(False, ms, error=f"the kv-net sender on A did not finish: {sent}", result=result)
        return Outcome(True, ms, None, None, result, guest_ms=None)

    def invoke(self, session: Exchanger, spec: LlmSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        if spec.action is LlmAction.PLACE:
            return self._routed(spec, values, timeout)
        req = self.request(spec, values)
        if isinstance(req, proto.LlmMigrateOut):
            return self._migrate(session, spec, req, timeout)
        if isinstance(req, str):
            return Outcome(False, 0.0, error=req)
        try:
            answer = call(session, req, timeout)
        except Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        except ProtocolError as exc:  # the agent answered, but not a reply of this op
            return Outcome(False, 0.0, error=f"the agent's reply: {exc}")
        if isinstance(answer.result, proto.LlmRunReply):
            ok, error, result = run_result(answer.result)
        elif isinstance(answer.result, proto.ModelPutReply):
            r = answer.result
            ok, error, result = True, None, {"name": r.name, "bytes": r.bytes, "tensors": r.tensors,
                                              "params": r.params, "put_ms": r.put_s * 1e3, "existed": r.existed}
        elif isinstance(answer.result, proto.ModelDiskReply):
            d = answer.result
            ok, error, result = True, None, {"path": d.path, "bytes": d.bytes, "write_ms": d.write_s * 1e3,
                                              "existed": d.existed}
        else:
            return Outcome(False, answer.ms, error=f"unexpected reply {type(answer.result).__name__}")
        if answer.agent_ms is not None:
            result["agent_ms"] = answer.agent_ms
        return Outcome(ok, answer.ms, answer.agent_ms, None, result, error, guest_ms=answer.agent_ms)
