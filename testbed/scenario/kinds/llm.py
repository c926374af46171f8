"""Workload kind `llm`: ServerlessLLM's questions on the node's agent (`model.*` and `llm.*` ops).
Actions:
  put   publish the checkpoint of an `llm` preset into the MHD once ("persist once"): a set-up
        step on one node; a model already there is not written again.
  disk  write the node's local-disk copy of a stored model (the `disk` loader's source).
  run   (default) start `instances` inference instances at once on the node, each its own
        process: load the model with `loader` (disk, cxl-copy, cxl-map), then generate
        `max_tokens` tokens from `prompt` ("load many").
A run's figures are medians over its instances: load_ms, first_token_ms (from the weights being
ready to the first token; a cxl-map instance's first touch of the weights lands here), ttft_ms
(load + first token: what a request that starts a cold instance waits, ServerlessLLM's time to
first token), tokens_per_s, and memory per instance
(pss_local_kib_per_instance, rss_cxl_kib_per_instance). tokens_crc is the CRC-32 of the tokens,
the same number for the same answer, so assertions can compare answers across loaders and nodes;
instances of one run that disagree fail the invocation.
"""

from __future__ import annotations

import statistics
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
    prompt: str | None = None  # run
    max_tokens: int | None = None  # run


LLM_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "run": (("model", "loader", "prompt", "max_tokens"), ("mhd", "instances")),
    "put": (("model", "preset"), ("mhd", "dtype", "seed")),
    "disk": (("model",), ("mhd",)),
}


def problem(what: str, value: object) -> str | None:
    """Why `value` cannot be the `what` of an llm spec, or None."""
    if what == "loader" and value not in LOADERS:
        return f"loader {value!r} is not one of {', '.join(LOADERS)}"
    if what == "instances":
        n = as_int(value)
        if n is None or not 1 <= n <= MAX_INSTANCES:
            return f"instances must be an integer from 1 to {MAX_INSTANCES}, got {value!r}"
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

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> LlmSpec:
        spec: LlmSpec = from_mapping(doc, LlmSpec, raw, kp)
        parse_common(doc, kp, raw, str(spec.action), LLM_KEYS, ("action",))
        for what in ("loader", "instances"):
            value = getattr(spec, what)
            if value is not None and not (isinstance(value, str) and "${" in value):
                if (found := problem(what, value)) is not None:
                    raise doc.error((*kp, what), found)
        if spec.max_tokens is not None and not 1 <= spec.max_tokens <= MAX_TOKENS:
            raise doc.error((*kp, "max_tokens"), f"must be from 1 to {MAX_TOKENS}, got {spec.max_tokens}")
        if spec.dtype is not None and spec.dtype not in ("float16", "float32"):
            raise doc.error((*kp, "dtype"), f"expected float16 or float32, got {spec.dtype!r}")
        return spec

    def templates(self, spec: LlmSpec) -> Iterator[tuple[KeyPath, str]]:
        for key in ("model", "loader", "instances", "prompt", "preset"):
            if isinstance(getattr(spec, key), str):
                yield (key,), getattr(spec, key)

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Exchanger]:
        return agent_session(target, timeout)

    def check(self, spec: LlmSpec, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        for what in ("loader", "instances"):
            raw = getattr(spec, what)
            if not isinstance(raw, str) or "${" not in raw:
                continue
            value = resolve(raw, values)
            if value is not None and (found := problem(what, value)) is not None:
                yield (what,), f"{found} (from {raw})"

    def request(self, spec: LlmSpec, values: Mapping[str, object]) -> object | str:
        """The agent request (a tbproto type) for this step or invocation, or why there is none."""
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

    def invoke(self, session: Exchanger, spec: LlmSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        req = self.request(spec, values)
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
