"""Workload kind `restore` (the sandbox kind is in testbed.scenario.kinds.sandbox).

restore: function snapshots in the shared CXL store, through the guest agent (`tbagent serve`,
ops snap.* and store.*). What a step or invocation does is its `action`:
  run      (default) snap.run: start `count` instances of `snapshot` in `mode` (cold | criu |
           lazy | template; usually a mode parameter such as ${restore}), keep them all alive,
           each answers `requests` requests. The result: startup_ms, first_request_ms, e2e_ms,
           restore_ms or init_ms (medians over the instances), memory per instance and in all
           (memory_kb: the local PSS of all of them alive, what the memory plot draws;
           node_used_delta_kib and local_kib_per_instance: the node's used memory growth, which
           MemAvailable's estimate makes noisy for a few instances), and `phases` for the
           startup breakdown. `sandbox: pool | fresh` (or ${sandbox}; none: no sandbox) restores
           inside a sandbox of the node's pool daemon: TrEnv's full path (template into a
           repurposed sandbox) or its baseline (criu into a sandbox made for the instance).
  dedup    snap.dedup: `count` instances alive, identical pages among their private pages. The
           page hashes of every node a unit invokes on are combined: cross_* figures count the
           identical pages over the nodes (on the invocation that completes the set).
  take     snap.take on the step's node: start `function` cold, warm it (`warm`: the event), dump
           it, publish it as `snapshot`, replacing a snapshot of that name (a set-up step).
  prepare  snap.prepare on the step's node: unpack it (`full`: also every page, for criu/lazy).
A run or dedup workload that names its `function` (with `env`, `warm`) takes its snapshot in its
prepare step, on the placement's create_on node, once per run: later units reuse it; one left by
an earlier run is replaced. Before the first invocation of a snapshot on a node the kind prepares
it there (unpacking, and for criu and lazy reading every page from CXL: seconds under TCG),
outside the measured time. `aliases` maps names to snapshots, e.g. a trace's functions
(snapshot: "${function}", aliases: {fn00: hello-snap}).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tbproto.codec import ProtocolError
from tbproto.jsontypes import Json, JsonObject
from tbproto.records import InstanceRecord, run_records

from testbed.access.agent import Exchanger
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping
from testbed.scenario.kinds.base import (
    Kind,
    Outcome,
    Target,
    agent_session,
    placeholders,
    substitute,
    substitute_value,
    template_strings,
)
from testbed.scenario.kinds.fields import (
    MODES,
    NO_SANDBOX,
    SANDBOX_MODES,
    SANDBOXES,
    Refused,
    as_int,
    check_fields,
    check_literals,
    env_of,
    mapping,
    median,
    number,
    parse_common,
    problem,
    request,
    resolve,
)

PAGE_KIB = 4


# --- restore: the figures of the agent's records -----------------------------------------------

PHASE_ORDER = ("spawn_ms", "init_ms", "sandbox_create_ms", "restore_ms", "ready_ms", "first_request_ms")


def _phases(rec: InstanceRecord) -> dict[str, float]:
    """One instance's startup broken down (ms): cold = spawn + init; a restore = (sandbox
    creation +) restore + ready (the rest until it answers: work dir, lazy-pages daemon, first
    ping); then the first request. The parts add up to e2e_ms."""
    startup = rec.startup_ms
    if startup is None:
        return {}
    out: dict[str, float] = {}
    if rec.init_ms is not None:
        out["spawn_ms"] = max(0.0, startup - rec.init_ms)
        out["init_ms"] = rec.init_ms
    elif rec.restore_ms is not None:
        create = rec.sandbox_create_ms
        if create is not None:
            out["sandbox_create_ms"] = create
        out["restore_ms"] = rec.restore_ms
        out["ready_ms"] = max(0.0, startup - rec.restore_ms - (create or 0.0))
    else:
        out["ready_ms"] = startup
    if rec.first_request_ms is not None:
        out["first_request_ms"] = rec.first_request_ms
    return out


MEM_KEYS = ("rss_local_kib", "pss_local_kib", "rss_cxl_kib", "cow_pages")
TIME_KEYS = ("startup_ms", "first_request_ms", "e2e_ms", "run_ms", "restore_ms", "init_ms", "sandbox_create_ms")


def run_result(reply: Json, count: int) -> tuple[bool, str | None, JsonObject, float | None]:
    """snap.run's records (decoded as tbproto's InstanceRecord and RunSummary) -> (ok, error,
    result, time measured on the node). Per-instance times are medians over the instances (the
    maxima too); memory figures are totals with every instance alive and per instance."""
    try:
        inst, summary = run_records(reply)
    except ProtocolError as exc:
        return False, f"snap.run answered {type(reply).__name__}: {exc}", {"value": reply}, None
    raw = [r for r in reply if isinstance(r, dict) and not r.get("summary")]
    error = None
    if bad := [r for r in inst if not r.ok]:
        error = f"instance {bad[0].instance}: {bad[0].error}"
    elif len(inst) != count:
        error = f"{len(inst)} instance records, expected {count}"
    first = inst[0] if inst else InstanceRecord()
    res: JsonObject = {"snapshot": first.snapshot, "function": first.function, "mode": first.mode,
                           "instances": len(inst)}
    if first.sandbox is not None:
        res["sandbox"] = first.sandbox
    for key in TIME_KEYS:
        vals = [v for r in inst if (v := getattr(r, key)) is not None]
        if (m := median(vals)) is not None:
            res[key] = m
        if key in ("startup_ms", "e2e_ms") and vals:
            res[key.replace("_ms", "_max_ms")] = max(vals)
    for key in ("minflt", "majflt"):
        vals = [float(v) for r in inst if r.faults is not None and (v := getattr(r.faults, key)) is not None]
        if (m := median(vals)) is not None:
            res[key] = m
    n = max(len(inst), 1)
    if summary is not None:
        totals = {k: v for k in MEM_KEYS if (v := getattr(summary, k)) is not None}
        if summary.node_used_delta_kib is not None:
            res["node_used_delta_kib"] = summary.node_used_delta_kib
        if summary.local_kib_per_instance is not None:
            res["local_kib_per_instance"] = summary.local_kib_per_instance
        if summary.template is not None:
            res.update({f"template_{k}": v for k, v in vars(summary.template).items() if v is not None})
    else:  # no summary record: the instances' own figures, each at its start
        totals = {k: float(sum(v for r in inst if r.memory is not None and (v := getattr(r.memory, k)) is not None))
                  for k in MEM_KEYS}
    res.update(totals)
    if "pss_local_kib" in totals:
        res["memory_kb"] = totals["pss_local_kib"]  # what the memory plot draws
    for k, v in totals.items():
        res[f"{k}_per_instance"] = v / n
    # A function may answer a `digest` (a number the same answer always gives): lifted so runs can
    # assert that every mode (and every instance) gave the same answer.
    digests = [r.result.get("digest") for r in inst if isinstance(r.result, dict)]
    if digests and all(isinstance(d, int) and not isinstance(d, bool) for d in digests):
        res["answer_digest"] = digests[0]
        res["answers_agree"] = 1 if len(set(digests)) == 1 else 0
    per = [_phases(r) for r in inst if r.ok]
    phases = {k: m for k in PHASE_ORDER if (m := median([p[k] for p in per if k in p])) is not None}
    if phases:
        res["phases"] = phases
    res["records"] = raw
    summary_raw = next((r for r in reply if isinstance(r, dict) and r.get("summary")), None)
    if summary_raw is not None:
        res["summary"] = summary_raw
    node_ms = res.get("e2e_ms") if count == 1 and len(inst) == 1 else None
    return error is None and bool(inst), error, res, node_ms


def take_result(reply: Json) -> JsonObject:
    if not isinstance(reply, dict):
        return {"value": reply}
    res = {k: v for k, v in reply.items() if k not in ("timings", "warm_result")}
    timings: JsonObject = reply["timings"] if isinstance(reply.get("timings"), dict) else {}
    phases = {k.replace("_s", "_ms"): float(v) * 1e3 for k, v in timings.items() if number(v)}
    res.update(phases)
    if phases:
        res["phases"] = phases
    if number(reply.get("template_bytes")):
        res["template_mib"] = reply["template_bytes"] / (1 << 20)
    return res


def dedup_result(reply: Json) -> tuple[JsonObject, list[str]]:
    """snap.dedup's answer -> (result without the hashes, the hashes of the local pages)."""
    if not isinstance(reply, dict):
        return {"value": reply}, []
    hashes = [str(h) for h in reply.get("hashes") or []]
    res = {k: v for k, v in reply.items() if k != "hashes"}
    local = int(reply.get("local_pages", len(hashes)))
    given: Json = reply.get("unique_local", reply.get("unique"))
    unique = int(given) if number(given) else len(set(hashes))
    res["local_pages"] = local
    res["local_unique"] = unique
    res["local_duplicates"] = local - unique  # local pages whose content another local page holds
    res["duplicate_fraction"] = (local - unique) / local if local else 0.0
    res["memory_kb"] = local * PAGE_KIB
    res["hashes_count"] = len(hashes)
    return res, hashes


def cross_node(per_node: Mapping[str, Counter[str]]) -> dict[str, float]:
    """Identical local pages over the nodes of a unit, from each node's page hashes."""
    union: Counter[str] = Counter()
    for c in per_node.values():
        union.update(c)
    total = sum(union.values())
    uniq = len(union)
    within = sum(sum(c.values()) - len(c) for c in per_node.values())
    return {"cross_nodes": len(per_node), "cross_local_pages": total, "cross_local_unique": uniq,
            "cross_local_duplicates": total - uniq,
            # contents a node holds that another node holds too (beyond each node's own repeats)
            "cross_node_duplicates": total - uniq - within,
            "cross_duplicate_fraction": (total - uniq) / total if total else 0.0}


# --- restore ------------------------------------------------------------------------------------

class RestoreAction(StrEnum):
    RUN = "run"
    DEDUP = "dedup"
    TAKE = "take"
    PREPARE = "prepare"


@dataclass(frozen=True)
class RestoreSpec:
    snapshot: str
    action: RestoreAction = RestoreAction.RUN
    mode: str | None = None  # cold | criu | lazy | template, or ${restore}
    count: int | str = 1  # instances alive at once, or ${instances}
    requests: int = 1
    event: Json = None  # the requests' event (default: the snapshot's warm-up event)
    populate: bool = False
    sandbox: str | None = None  # pool | fresh | none, or ${sandbox}
    aliases: Json = None  # name -> snapshot, applied to `snapshot` after substitution
    function: str | None = None  # take: the function; run/dedup: take the snapshot in prepare
    env: Json = None  # name -> value; parse() leaves a dict[str, str]
    warm: Json = None
    full: bool = True  # prepare: the full image set too
    mhd: str = "mhd0"


RESTORE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # action: (required, optional)
    "run": (("mode",), ("count", "requests", "event", "populate", "sandbox", "aliases", "function", "env", "warm")),
    "dedup": (("mode",), ("count", "event", "aliases", "function", "env", "warm")),
    "take": (("function",), ("env", "warm")),
    "prepare": ((), ("full", "aliases")),
}


@dataclass
class RunState:
    """What one run of a scenario (its nonce) has done with snapshots: taken where, prepared
    where, and the dedup page hashes of its units. Threads of the run share it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    key_locks: dict[tuple[str, ...], threading.Lock] = field(default_factory=dict)
    taken: dict[tuple[str, str], str] = field(default_factory=dict)  # (mhd, snapshot) -> what was taken
    prepared: set[tuple[str, str, str, bool]] = field(default_factory=set)  # (node, mhd, snapshot, full)
    ledger: dict[tuple[str, ...], dict[str, Counter[str]]] = field(default_factory=dict)  # unit -> node -> hashes

    def key_lock(self, key: tuple[str, ...]) -> threading.Lock:
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())


class RestoreKind(Kind[RestoreSpec, Exchanger]):
    """Snapshots in the CXL store through the agent (see the module's docstring)."""

    name = "restore"
    spec_type = RestoreSpec

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, RunState] = {}  # nonce -> that run's state

    def run_state(self, values: Mapping[str, object]) -> RunState:
        with self.lock:
            return self.runs.setdefault(str(values.get("nonce", "")), RunState())

    # --- spec -------------------------------------------------------------------------------

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Yaml]) -> RestoreSpec:
        spec: RestoreSpec = from_mapping(doc, RestoreSpec, raw, kp)
        parse_common(doc, kp, raw, str(spec.action), RESTORE_KEYS, ("snapshot", "action", "mhd"))
        check_literals(doc, kp, spec, ("snapshot", "mode", "sandbox", "function", "count"))
        if spec.requests < 1:
            raise doc.error((*kp, "requests"), f"must be at least 1, got {spec.requests}")
        for key in ("event", "warm"):
            mapping(doc, (*kp, key), getattr(spec, key), "a JSON object: the function's event")
        env = env_of(doc, (*kp, "env"), spec.env)
        aliases = mapping(doc, (*kp, "aliases"), spec.aliases, "names to snapshot names")
        for k, v in (aliases or {}).items():
            if (found := problem("snapshot", v)) is not None:
                raise doc.error((*kp, "aliases", k), found)
        if spec.action in (RestoreAction.RUN, RestoreAction.DEDUP) and spec.function is None:
            for key in ("env", "warm"):
                if key in raw:
                    raise doc.error((*kp, key), "used when the workload takes its snapshot: give `function` too")
        if spec.action is RestoreAction.RUN and isinstance(spec.sandbox, str) and spec.sandbox in SANDBOXES \
                and isinstance(spec.mode, str) and not placeholders(spec.mode) and spec.mode not in SANDBOX_MODES:
            raise doc.error((*kp, "sandbox"), f"a restore into a sandbox is {' or '.join(SANDBOX_MODES)}, not {spec.mode}")
        return replace(spec, env=env, aliases=aliases)

    def templates(self, spec: RestoreSpec) -> Iterator[tuple[KeyPath, str]]:
        for key in ("snapshot", "mode", "function", "sandbox", "count"):
            if isinstance(getattr(spec, key), str):
                yield (key,), getattr(spec, key)
        for key in ("event", "warm", "env"):
            yield from template_strings(getattr(spec, key) or {}, (key,))

    def check(self, spec: RestoreSpec, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        yield from check_fields(spec, values, ("mode", "sandbox", "function", "count"))
        if placeholders(spec.snapshot) and (name := resolve(spec.snapshot, values)) is not None:
            name = (spec.aliases or {}).get(name, name)
            if (found := problem("snapshot", name)) is not None:
                yield ("snapshot",), f"{found} (from {spec.snapshot})"
        mode, sandbox = resolve(spec.mode, values), resolve(spec.sandbox, values)
        if spec.action is RestoreAction.RUN and sandbox in SANDBOXES and mode in MODES and mode not in SANDBOX_MODES:
            yield ("sandbox",), f"a restore into a sandbox is {' or '.join(SANDBOX_MODES)}, not {mode}"

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Exchanger]:
        return agent_session(target, timeout)

    def has_prepare(self, spec: RestoreSpec) -> bool:
        return spec.action in (RestoreAction.RUN, RestoreAction.DEDUP) and spec.function is not None

    # --- steps --------------------------------------------------------------------------------

    def snapshot_name(self, spec: RestoreSpec, values: Mapping[str, object]) -> str:
        name = substitute(spec.snapshot, values)
        return str((spec.aliases or {}).get(name, name))

    def prepare(self, session: Exchanger, spec: RestoreSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        return self._take(session, spec, values, replace_any=False)

    def _take(self, agent: Exchanger, spec: RestoreSpec, values: Mapping[str, object], replace_any: bool) -> Outcome:
        """Take the snapshot on this node. replace_any=False (a workload's prepare): keep one this
        run took with the same function, env and warm-up; replace any other of that name."""
        snap = self.snapshot_name(spec, values)
        run, node = self.run_state(values), str(values.get("node", ""))
        assert spec.function is not None
        function = substitute(spec.function, values)
        env = {k: substitute(v, values) for k, v in (spec.env or {}).items()}
        warm = substitute_value(spec.warm, values) if spec.warm is not None else None
        what = json.dumps([function, env, warm], sort_keys=True)
        key = (spec.mhd, snap)
        t0 = time.perf_counter()
        try:
            for found in (problem("snapshot", snap), problem("function", function)):
                if found is not None:
                    return Outcome(False, 0.0, error=found)
            with run.key_lock(("take", *key)):
                listing = request(agent, "store.list", mhd=spec.mhd).result
                existing = next((r for r in listing or [] if isinstance(r, dict) and r.get("name") == snap), None)
                if existing is not None and not replace_any and run.taken.get(key) == what:
                    return Outcome(True, (time.perf_counter() - t0) * 1e3, result={
                        "snapshot": snap, "reused": True, "function": function, "head": existing.get("head"),
                        "seq": existing.get("seq"), "bytes": existing.get("bytes")})
                if existing is not None:
                    request(agent, "store.delete", mhd=spec.mhd, name=snap)
                with run.lock:  # nodes that prepared the old one must prepare again
                    run.prepared = {p for p in run.prepared if (p[1], p[2]) != key}
                args: JsonObject = {"name": snap, "function": function, "mhd": spec.mhd}
                if warm is not None:
                    args["warm"] = warm
                if env:
                    args["env"] = env
                reply = request(agent, "snap.take", **args).result
                with run.lock:
                    run.taken[key] = what
                    run.prepared.add((node, spec.mhd, snap, True))  # taking leaves the full set here
        except Refused as exc:
            return Outcome(False, (time.perf_counter() - t0) * 1e3, error=str(exc))
        res = take_result(reply)
        res.update(snapshot=snap, reused=False, replaced=existing is not None)
        return Outcome(True, (time.perf_counter() - t0) * 1e3, result=res)

    def ensure_prepared(self, agent: Exchanger, values: Mapping[str, object], mhd: str, snap: str, full: bool) -> str | None:
        """snap.prepare on this node once per run (per snapshot taken): an error message or None."""
        run, node = self.run_state(values), str(values.get("node", ""))
        key = (node, mhd, snap, full)
        with run.key_lock(("prepare", node, mhd, snap)):
            with run.lock:
                if key in run.prepared or (node, mhd, snap, True) in run.prepared:
                    return None
            try:
                request(agent, "snap.prepare", name=snap, mhd=mhd, full=full)
            except Refused as exc:
                return f"preparing {snap} on {node}: {exc}"
            with run.lock:
                run.prepared.add(key)
        return None

    # --- invocations -----------------------------------------------------------------------------

    def invoke(self, session: Exchanger, spec: RestoreSpec, values: Mapping[str, object], timeout: float) -> Outcome:
        if spec.action is RestoreAction.TAKE:
            return self._take(session, spec, values, replace_any=True)
        snap = self.snapshot_name(spec, values)
        if (found := problem("snapshot", snap)) is not None:
            return Outcome(False, 0.0, error=found)
        if spec.action is RestoreAction.PREPARE:
            try:
                answer = request(session, "snap.prepare", name=snap, mhd=spec.mhd, full=spec.full)
            except Refused as exc:
                return Outcome(False, exc.ms, error=str(exc))
            run = self.run_state(values)
            with run.lock:
                run.prepared.add((str(values.get("node", "")), spec.mhd, snap, spec.full))
            reply = answer.result
            return Outcome(True, answer.ms, result=reply if isinstance(reply, dict) else {"value": reply})
        assert spec.mode is not None  # run and dedup require it (RESTORE_KEYS, checked by parse)
        mode = substitute(spec.mode, values)
        count = as_int(substitute_value(spec.count, values))
        sandbox = substitute(spec.sandbox, values) if spec.sandbox is not None else None
        for what, value in (("mode", mode), ("count", count), ("sandbox", sandbox)):
            if value is not None and (found := problem(what, value)) is not None:
                return Outcome(False, 0.0, error=found)
        assert count is not None
        if (error := self.ensure_prepared(session, values, spec.mhd, snap, mode in ("criu", "lazy"))) is not None:
            return Outcome(False, 0.0, error=error)
        event = substitute_value(spec.event, values) if spec.event is not None else None
        if spec.action is RestoreAction.DEDUP:
            return self._dedup(session, spec, values, snap, mode, count, event)
        args: JsonObject = {"name": snap, "mode": mode, "count": count, "mhd": spec.mhd}
        if spec.requests != 1:
            args["requests"] = spec.requests
        if spec.populate:
            args["populate"] = True
        if event is not None:
            args["event"] = event
        if sandbox not in (None, *NO_SANDBOX):
            args["sandbox"] = sandbox
        try:
            answer = request(session, "snap.run", **args)
        except Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        ok, error, result, node_ms = run_result(answer.result, count)
        if answer.agent_ms is not None:  # the guest's own time for the op: latency_ms minus it is transport
            result["agent_ms"] = answer.agent_ms
        return Outcome(ok, answer.ms, node_ms, None, result, error, guest_ms=answer.agent_ms)

    def _dedup(self, agent: Exchanger, spec: RestoreSpec, values: Mapping[str, object], snap: str, mode: str, count: int,
               event: Json) -> Outcome:
        args: JsonObject = {"name": snap, "mode": mode, "count": count, "mhd": spec.mhd}
        if event is not None:
            args["event"] = event
        try:
            answer = request(agent, "snap.dedup", **args)
        except Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        result, hashes = dedup_result(answer.result)
        unit = tuple(str(values.get(k, "")) for k in ("mode", "workload", "rep"))
        run = self.run_state(values)
        with self.lock:  # the hashes are large: an earlier run's are dropped once this one dedups
            for old in [n for n in self.runs if n != str(values.get("nonce", ""))]:
                self.runs[old].ledger.clear()
        with run.lock:
            per_node = run.ledger.setdefault(unit, {})
            per_node[str(values.get("node", ""))] = Counter(hashes)
            if len(per_node) > 1:
                result.update(cross_node(per_node))
        return Outcome(True, answer.ms, None, None, result)
