"""Workload kind `sandbox`: the node's sandbox pool, `tbagent sandbox ...` over the node's SSH connection. Actions:
  run      (default) run `function` once: `sandbox: pool` in a repurposed sandbox of the pool (a
           set-up step with action pool starts the daemon), `sandbox: fresh` in a sandbox crun
           creates from scratch (the baseline; the catalog's env only). phases: the steps to a
           ready function, then the request. Fresh runs on a node are serialised: the crun
           baseline clears every baseline container of the node when it starts.
  pool     start the pool daemon with `size` sandboxes (or resize it); `max`, `on_exhausted`.
  stop     destroy every sandbox of the pool and stop its daemon.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from enum import StrEnum

from tbproto import ops as proto
from tbproto.codec import ProtocolError, encode
from tbproto.jsontypes import Json, JsonObject
from tbproto.records import SandboxRun

from testbed.access.agent import Exchanger
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping
from testbed.scenario.kinds.base import (
    Kind,
    Outcome,
    Target,
    agent_session,
    substitute,
    substitute_value,
    template_strings,
)
from testbed.scenario.kinds.fields import (
    NO_SANDBOX,
    POLICIES,
    SANDBOXES,
    Refused,
    as_int,
    call,
    check_fields,
    check_literals,
    env_of,
    mapping,
    number,
    parse_common,
    problem,
    resolve,
)


class SandboxAction(StrEnum):
    RUN = "run"
    POOL = "pool"
    STOP = "stop"


@dataclass(frozen=True)
class SandboxSpec:
    action: SandboxAction = SandboxAction.RUN
    function: str | None = None  # a function of the catalog, or ${function}
    sandbox: str | None = None  # pool | fresh, or ${sandbox}
    event: Json = None
    env: Json = None  # pool only: crun's baseline runs with the catalog's env
    size: int | str | None = None  # pool: sandboxes kept ready
    max: int | None = None  # pool: most sandboxes in all
    on_exhausted: str | None = None  # pool: queue | fallback


SANDBOX_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "run": (("function", "sandbox"), ("event", "env")),
    "pool": (("size",), ("max", "on_exhausted")),
    "stop": ((), ()),
}


def sandbox_result(run: SandboxRun, sandbox: str) -> tuple[bool, str | None, JsonObject]:
    """sandbox.run (pool) or sandbox.fresh's record -> (ok, error, result): phases and times in ms."""
    timings = run.timings
    fn = run.reply

    def ms(key: str) -> float | None:
        v: Json = timings.get(key)
        return float(v) * 1e3 if number(v) else None

    phases: dict[str, float] = {}
    if sandbox == "pool":
        waited = run.waited_s * 1e3 if run.waited_s is not None else 0.0
        phases["pick_ms"] = waited
        created = timings.get("created")
        if isinstance(created, dict) and number(created.get("total")):  # none idle: made one (fallback)
            phases["create_ms"] = float(created["total"]) * 1e3
        steps: tuple[str, ...] = ("cgroup", "rootfs", "process", "function_init")
    else:
        waited = 0.0
        steps = ("rootfs_outer", "bundle", "create", "network", "process", "function_init")
    for step in steps:
        if (v := ms(step)) is not None:
            phases["rootfs_ms" if step == "rootfs_outer" else f"{step}_ms"] = v
    if fn.run_s is not None:
        phases["run_ms"] = fn.run_s * 1e3
    res: JsonObject = {"sandbox": sandbox, "fresh": run.fresh if run.fresh is not None else sandbox == "fresh",
                           "ok_function": fn.ok, "result": fn.result}
    for key, out in (("ready_sandbox", "sandbox_ms"), ("ready_function", "startup_ms")):
        if (v := ms(key)) is not None:
            res[out] = v + waited
    if "startup_ms" in res and "run_ms" in phases:
        res["e2e_ms"] = res["startup_ms"] + phases["run_ms"]
    if fn.invoke_s is not None:
        res["first_request_ms"] = fn.invoke_s * 1e3
    if fn.run_s is not None:
        res["run_ms"] = fn.run_s * 1e3
    if run.release is not None:
        res["teardown_ms"] = sum(run.release.timings.values()) * 1e3
        res["clean"] = run.release.clean
    elif run.destroy_s is not None:
        res["teardown_ms"] = run.destroy_s * 1e3
    res["phases"] = phases
    res["timings"] = timings
    ok = run.ok and fn.ok
    error = None if ok else str(fn.error or run.error or "the sandbox run failed")
    return ok, error, res


class SandboxKind(Kind[SandboxSpec, Exchanger]):
    """The node's sandbox pool through the agent session (see the module's docstring)."""

    name = "sandbox"
    spec_type = SandboxSpec

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fresh_locks: dict[str, threading.Lock] = {}

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> SandboxSpec:
        spec: SandboxSpec = from_mapping(doc, SandboxSpec, raw, kp)
        parse_common(doc, kp, raw, str(spec.action), SANDBOX_KEYS, ("action",))
        check_literals(doc, kp, spec, ("function", "sandbox", "size"))
        if spec.sandbox in NO_SANDBOX:
            raise doc.error((*kp, "sandbox"), f"expected {' or '.join(SANDBOXES)}")
        mapping(doc, (*kp, "event"), spec.event, "a JSON object: the function's event")
        env = env_of(doc, (*kp, "env"), spec.env)
        if env and spec.sandbox == "fresh":
            raise doc.error((*kp, "env"), "a fresh (crun) sandbox runs with the catalog's env only")
        if spec.max is not None and spec.max < 1:
            raise doc.error((*kp, "max"), f"must be at least 1, got {spec.max}")
        if spec.on_exhausted is not None and spec.on_exhausted not in POLICIES:
            raise doc.error((*kp, "on_exhausted"), f"expected one of {', '.join(POLICIES)}, got {spec.on_exhausted!r}")
        return replace(spec, env=env)

    def templates(self, spec: SandboxSpec) -> Iterator[tuple[KeyPath, str]]:
        for key in ("function", "sandbox", "size"):
            if isinstance(getattr(spec, key), str):
                yield (key,), getattr(spec, key)
        for key in ("event", "env"):
            yield from template_strings(getattr(spec, key) or {}, (key,))

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Exchanger]:
        return agent_session(target, timeout)

    def check(self, spec: SandboxSpec, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        yield from check_fields(spec, values, ("function", "sandbox", "size"))
        if spec.sandbox is not None and resolve(spec.sandbox, values) in NO_SANDBOX:
            yield ("sandbox",), f"expected {' or '.join(SANDBOXES)} (from {spec.sandbox})"
        if spec.env and resolve(spec.sandbox, values) == "fresh":
            yield ("env",), "a fresh (crun) sandbox runs with the catalog's env only"

    def request(self, spec: SandboxSpec, values: Mapping[str, object]) -> object | str:
        """The agent request (a tbproto type) for this step or invocation, or why there is none."""
        if spec.action is SandboxAction.POOL:
            size = as_int(substitute_value(spec.size, values))
            if size is None or (found := problem("size", size)) is not None:
                return problem("size", substitute_value(spec.size, values)) or "size must be an integer"
            policy = proto.Policy(spec.on_exhausted) if spec.on_exhausted is not None else None
            return proto.SandboxPool(size=size, max=spec.max, on_exhausted=policy)
        if spec.action is SandboxAction.STOP:
            return proto.SandboxStop()
        assert spec.function is not None and spec.sandbox is not None
        function, sandbox = substitute(spec.function, values), substitute(spec.sandbox, values)
        for what, value in (("function", function), ("sandbox", sandbox)):
            if (found := problem(what, value)) is not None:
                return found
        event = substitute_value(spec.event, values) if spec.event is not None else {}
        if sandbox == "fresh":
            return proto.SandboxRunFresh(function, event)
        env = {k: substitute(v, values) for k, v in (spec.env or {}).items()}
        return proto.SandboxRunPool(function, event, env or None)

    def _fresh_lock(self, node: str) -> threading.Lock:
        with self.lock:
            return self.fresh_locks.setdefault(node, threading.Lock())

    def invoke(self, session: Exchanger, spec: SandboxSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        req = self.request(spec, values)
        if isinstance(req, str):
            return Outcome(False, 0.0, error=req)
        try:
            if isinstance(req, proto.SandboxRunFresh):  # the crun baseline clears the node's other containers
                with self._fresh_lock(str(values.get("node", ""))):
                    answer = call(session, req, timeout)
            else:
                answer = call(session, req, timeout)
        except Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        except ProtocolError as exc:  # the agent answered, but not a record of this op
            return Outcome(False, 0.0, error=f"the agent's reply: {exc}")
        if not isinstance(answer.result, SandboxRun):  # pool or stop: a set-up step
            result = answer.result if isinstance(answer.result, dict) else {"value": encode(answer.result)}
            return Outcome(True, answer.ms, answer.agent_ms, None, result, guest_ms=answer.agent_ms)
        sandbox = proto.Placement.FRESH if isinstance(req, proto.SandboxRunFresh) else proto.Placement.POOL
        ok, error, result = sandbox_result(answer.result, sandbox.value)
        if answer.agent_ms is not None:  # the guest's own time for the op: latency_ms minus it is transport
            result["agent_ms"] = answer.agent_ms
        return Outcome(ok, answer.ms, answer.agent_ms, None, result, error, guest_ms=answer.agent_ms)
