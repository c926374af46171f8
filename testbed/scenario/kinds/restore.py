"""Workload kinds `restore` and `sandbox` (listed in the registry testbed.scenario.kinds).

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

sandbox: the node's sandbox pool, `tbagent sandbox ...` over the node's SSH connection. Actions:
  run      (default) run `function` once: `sandbox: pool` in a repurposed sandbox of the pool (a
           set-up step with action pool starts the daemon), `sandbox: fresh` in a sandbox crun
           creates from scratch (the baseline; the catalog's env only). phases: the steps to a
           ready function, then the request. Fresh runs on a node are serialised: the crun
           baseline clears every baseline container of the node when it starts.
  pool     start the pool daemon with `size` sandboxes (or resize it); `max`, `on_exhausted`.
  stop     destroy every sandbox of the pool and stop its daemon.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from testbed import paths
from testbed.access.node import Node
from testbed.config.yamlfile import Document, KeyPath, from_mapping, string_keys
from testbed.errors import NodeError
from testbed.scenario.kinds.base import (
    Failure,
    Kind,
    Outcome,
    Target,
    agent_session,
    parse_result,
    placeholders,
    run_argv,
    substitute,
    substitute_value,
    tail,
    template_strings,
)

MODES = ("cold", "criu", "lazy", "template")
SANDBOX_MODES = ("criu", "template")  # what restores into sandboxes support
SANDBOXES = ("pool", "fresh")
NO_SANDBOX = ("", "none")
POLICIES = ("queue", "fallback")
SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,40}\Z")
FUNCTIONS_DIR = paths.REPO / "guest-agent" / "tbagent" / "functions"
PAGE_KIB = 4


def known_functions() -> tuple[str, ...]:
    """The guest agent's function catalog, read from its sources (the host does not import it)."""
    return tuple(sorted(p.stem for p in FUNCTIONS_DIR.glob("*.py") if not p.stem.startswith("_")))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


# --- validation shared by parse (literal values) and check (values of the placeholders) --------

def _problem(what: str, value: Any) -> str | None:
    """Why `value` cannot be the `what` of a spec, or None."""
    if what == "snapshot":
        if not isinstance(value, str) or not SNAPSHOT_RE.match(value):
            return f"snapshot name {value!r}: 1-40 of [A-Za-z0-9._:-]"
    elif what == "mode":
        if value not in MODES:
            return f"mode {value!r} is not one of {', '.join(MODES)}"
    elif what == "sandbox":
        if value not in (*SANDBOXES, *NO_SANDBOX):
            return f"sandbox {value!r} is not one of {', '.join(SANDBOXES)}, none"
    elif what == "function":
        known = known_functions()
        if known and value not in known:
            return f"unknown function {value!r} (functions: {', '.join(known)})"
    elif what in ("count", "size"):
        n = _as_int(value)
        if n is None or n < (0 if what == "size" else 1):
            return f"{what} must be an integer of at least {0 if what == 'size' else 1}, got {value!r}"
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _resolve(text: Any, values: Mapping[str, object]) -> Any:
    """The value of a template if every placeholder in it is known, else None (not checkable)."""
    if not isinstance(text, str):
        return text
    if any(name not in values for name in placeholders(text)):
        return None
    return substitute_value(text, values)


def _check_fields(spec: Any, values: Mapping[str, object], fields: tuple[str, ...]) -> Iterator[tuple[KeyPath, str]]:
    for what in fields:
        raw = getattr(spec, what)
        if raw is None or (isinstance(raw, str) and not placeholders(raw)):
            continue  # absent, or a literal already checked by parse
        value = _resolve(raw, values)
        if value is None:
            continue
        if (problem := _problem(what, value)) is not None:
            yield (what,), f"{problem} (from {raw})"


def _parse_common(doc: Document, kp: KeyPath, raw: dict[str, Any], action: str,
                  keys: dict[str, tuple[tuple[str, ...], tuple[str, ...]]], always: tuple[str, ...]) -> None:
    """Keys an action does not read are errors; keys it needs must be there."""
    required, optional = keys[action]
    allowed = set(always) | set(required) | set(optional)
    for key in raw:
        if key not in allowed:
            raise doc.error((*kp, str(key)), f"not used by action {action} (it takes {', '.join(sorted(allowed))})")
    for key in required:
        if raw.get(key) is None:
            raise doc.error(kp, f"action {action} needs '{key}'")


def _check_literals(doc: Document, kp: KeyPath, spec: Any, fields: tuple[str, ...]) -> None:
    for what in fields:
        value = getattr(spec, what)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            problem = _problem(what, value)
        elif isinstance(value, str) and not placeholders(value):
            problem = _problem(what, value)
        elif isinstance(value, str):
            continue
        else:
            problem = f"expected a string, got {value!r}"
        if problem is not None:
            raise doc.error((*kp, what), problem)


def _mapping(doc: Document, kp: KeyPath, value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise doc.error(kp, f"expected a mapping ({what}), got {type(value).__name__}")
    string_keys(doc, kp, value)
    return dict(value)


def _env(doc: Document, kp: KeyPath, value: Any) -> dict[str, str] | None:
    env = _mapping(doc, kp, value, "environment variables of the function: NAME: value")
    if env is None:
        return None
    for k, v in env.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise doc.error((*kp, k), "not an environment variable name")
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise doc.error((*kp, k), f"expected a string or a number, got {v!r}")
    return {k: str(v) for k, v in env.items()}


# --- agent calls ------------------------------------------------------------------------------

class _Refused(Exception):
    """The agent answered with an error (recorded as a failed invocation, the run goes on)."""

    def __init__(self, message: str, ms: float) -> None:
        super().__init__(message)
        self.ms = ms


def request(agent: Any, op: str, **args: Any) -> tuple[Any, float]:
    """One agent request: (result, milliseconds); _Refused when the agent answers an error,
    Failure when the session or the node fails."""
    from testbed.access.agent import AgentError

    t0 = time.perf_counter()
    try:
        reply = agent.request(op, **args)
    except AgentError as exc:
        raise _Refused(str(exc), (time.perf_counter() - t0) * 1e3) from None
    except NodeError as exc:
        raise Failure(str(exc)) from exc
    except (OSError, EOFError, ValueError) as exc:
        raise Failure(f"agent {op}: {exc or type(exc).__name__}") from exc
    return reply, (time.perf_counter() - t0) * 1e3


# --- restore: the figures of the agent's records -----------------------------------------------

PHASE_ORDER = ("spawn_ms", "init_ms", "sandbox_create_ms", "restore_ms", "ready_ms", "first_request_ms")


def _phases(rec: dict[str, Any]) -> dict[str, float]:
    """One instance's startup broken down (ms): cold = spawn + init; a restore = (sandbox
    creation +) restore + ready (the rest until it answers: work dir, lazy-pages daemon, first
    ping); then the first request. The parts add up to e2e_ms."""
    startup: Any = rec.get("startup_ms")
    first: Any = rec.get("first_request_ms")
    if not _number(startup):
        return {}
    out: dict[str, float] = {}
    if _number(rec.get("init_ms")):
        out["spawn_ms"] = max(0.0, float(startup) - float(rec["init_ms"]))
        out["init_ms"] = float(rec["init_ms"])
    elif _number(rec.get("restore_ms")):
        create = float(rec["sandbox_create_ms"]) if _number(rec.get("sandbox_create_ms")) else None
        if create is not None:
            out["sandbox_create_ms"] = create
        out["restore_ms"] = float(rec["restore_ms"])
        out["ready_ms"] = max(0.0, float(startup) - float(rec["restore_ms"]) - (create or 0.0))
    else:
        out["ready_ms"] = float(startup)
    if _number(first):
        out["first_request_ms"] = float(first)
    return out


def run_result(reply: Any, count: int) -> tuple[bool, str | None, dict[str, Any], float | None]:
    """snap.run's records -> (ok, error, result, time measured on the node). Per-instance times
    are medians over the instances (the maxima too); memory figures are totals with every
    instance alive and per instance."""
    if not isinstance(reply, list):
        return False, f"snap.run answered a {type(reply).__name__}, expected a list of records", {"value": reply}, None
    inst = [r for r in reply if isinstance(r, dict) and not r.get("summary")]
    summary = next((r for r in reply if isinstance(r, dict) and r.get("summary")), None)
    error = None
    if bad := [r for r in inst if not r.get("ok")]:
        error = f"instance {bad[0].get('instance')}: {bad[0].get('error')}"
    elif len(inst) != count:
        error = f"{len(inst)} instance records, expected {count}"
    first = inst[0] if inst else {}
    res: dict[str, Any] = {"snapshot": first.get("snapshot"), "function": first.get("function"),
                           "mode": first.get("mode"), "instances": len(inst)}
    if first.get("sandbox") is not None:
        res["sandbox"] = first["sandbox"]
    for key in ("startup_ms", "first_request_ms", "e2e_ms", "run_ms", "restore_ms", "init_ms", "sandbox_create_ms"):
        vals = [float(r[key]) for r in inst if _number(r.get(key))]
        if (m := _median(vals)) is not None:
            res[key] = m
        if key in ("startup_ms", "e2e_ms") and vals:
            res[key.replace("_ms", "_max_ms")] = max(vals)
    for key in ("minflt", "majflt"):
        vals = [float(r["faults"][key]) for r in inst if isinstance(r.get("faults"), dict) and _number(r["faults"].get(key))]
        if (m := _median(vals)) is not None:
            res[key] = m
    n = max(len(inst), 1)
    mem_keys = ("rss_local_kib", "pss_local_kib", "rss_cxl_kib", "cow_pages")
    if summary is not None:
        totals = {k: float(summary[k]) for k in mem_keys if _number(summary.get(k))}
        if _number(summary.get("node_used_delta_kib")):
            res["node_used_delta_kib"] = float(summary["node_used_delta_kib"])
        if _number(summary.get("local_kib_per_instance")):
            res["local_kib_per_instance"] = float(summary["local_kib_per_instance"])
        tmpl = summary.get("template")
        if isinstance(tmpl, dict):
            res.update({f"template_{k}": float(v) for k, v in tmpl.items() if _number(v)})
    else:  # no summary record: the instances' own figures, each at its start
        totals = {k: float(sum(r["memory"][k] for r in inst if isinstance(r.get("memory"), dict)
                               and _number(r["memory"].get(k)))) for k in mem_keys}
    res.update(totals)
    if "pss_local_kib" in totals:
        res["memory_kb"] = totals["pss_local_kib"]  # what the memory plot draws
    for k, v in totals.items():
        res[f"{k}_per_instance" if k != "cow_pages" else "cow_pages_per_instance"] = v / n
    per = [_phases(r) for r in inst if r.get("ok")]
    phases = {k: m for k in PHASE_ORDER if (m := _median([p[k] for p in per if k in p])) is not None}
    if phases:
        res["phases"] = phases
    res["records"] = inst
    if summary is not None:
        res["summary"] = summary
    node_ms = res.get("e2e_ms") if count == 1 and len(inst) == 1 else None
    return error is None and bool(inst), error, res, node_ms


def take_result(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        return {"value": reply}
    res = {k: v for k, v in reply.items() if k not in ("timings", "warm_result")}
    timings: dict[str, Any] = reply["timings"] if isinstance(reply.get("timings"), dict) else {}
    phases = {k.replace("_s", "_ms"): float(v) * 1e3 for k, v in timings.items() if _number(v)}
    res.update(phases)
    if phases:
        res["phases"] = phases
    if _number(reply.get("template_bytes")):
        res["template_mib"] = reply["template_bytes"] / (1 << 20)
    return res


def dedup_result(reply: Any) -> tuple[dict[str, Any], list[str]]:
    """snap.dedup's answer -> (result without the hashes, the hashes of the local pages)."""
    if not isinstance(reply, dict):
        return {"value": reply}, []
    hashes = [str(h) for h in reply.get("hashes") or []]
    res = {k: v for k, v in reply.items() if k != "hashes"}
    local = int(reply.get("local_pages", len(hashes)))
    given: Any = reply.get("unique_local", reply.get("unique"))
    unique = int(given) if _number(given) else len(set(hashes))
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
    event: Any = None  # the requests' event (default: the snapshot's warm-up event)
    populate: bool = False
    sandbox: str | None = None  # pool | fresh | none, or ${sandbox}
    aliases: Any = None  # name -> snapshot, applied to `snapshot` after substitution
    function: str | None = None  # take: the function; run/dedup: take the snapshot in prepare
    env: Any = None
    warm: Any = None
    full: bool = True  # prepare: the full image set too
    mhd: str = "mhd0"


RESTORE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # action: (required, optional)
    "run": (("mode",), ("count", "requests", "event", "populate", "sandbox", "aliases", "function", "env", "warm")),
    "dedup": (("mode",), ("count", "event", "aliases", "function", "env", "warm")),
    "take": (("function",), ("env", "warm")),
    "prepare": ((), ("full", "aliases")),
}


class RestoreKind(Kind[Any, Any]):
    """Snapshots in the CXL store through the agent (see the module's docstring)."""

    name = "restore"
    spec_type = RestoreSpec

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key_locks: dict[tuple[str, ...], threading.Lock] = {}
        self.taken: dict[tuple[str, str, str], str] = {}  # (nonce, mhd, snapshot) -> what was taken
        self.prepared: set[tuple[str, str, str, str, bool]] = set()  # (nonce, node, mhd, snapshot, full)
        self.ledger: dict[tuple[str, ...], dict[str, Counter[str]]] = {}  # dedup hashes per unit and node

    # --- spec -------------------------------------------------------------------------------

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Any]) -> Any:
        spec: RestoreSpec = from_mapping(doc, RestoreSpec, raw, kp)
        _parse_common(doc, kp, raw, str(spec.action), RESTORE_KEYS, ("snapshot", "action", "mhd"))
        _check_literals(doc, kp, spec, ("snapshot", "mode", "sandbox", "function", "count"))
        if spec.requests < 1:
            raise doc.error((*kp, "requests"), f"must be at least 1, got {spec.requests}")
        for key in ("event", "warm"):
            _mapping(doc, (*kp, key), getattr(spec, key), "a JSON object: the function's event")
        env = _env(doc, (*kp, "env"), spec.env)
        aliases = _mapping(doc, (*kp, "aliases"), spec.aliases, "names to snapshot names")
        for k, v in (aliases or {}).items():
            if (problem := _problem("snapshot", v)) is not None:
                raise doc.error((*kp, "aliases", k), problem)
        if spec.action in (RestoreAction.RUN, RestoreAction.DEDUP) and spec.function is None:
            for key in ("env", "warm"):
                if key in raw:
                    raise doc.error((*kp, key), "used when the workload takes its snapshot: give `function` too")
        if spec.action is RestoreAction.RUN and isinstance(spec.sandbox, str) and spec.sandbox in SANDBOXES \
                and isinstance(spec.mode, str) and not placeholders(spec.mode) and spec.mode not in SANDBOX_MODES:
            raise doc.error((*kp, "sandbox"), f"a restore into a sandbox is {' or '.join(SANDBOX_MODES)}, not {spec.mode}")
        return replace(spec, env=env, aliases=aliases)

    def templates(self, spec: Any) -> Iterator[tuple[KeyPath, str]]:
        for key in ("snapshot", "mode", "function", "sandbox", "count"):
            if isinstance(getattr(spec, key), str):
                yield (key,), getattr(spec, key)
        for key in ("event", "warm", "env"):
            yield from template_strings(getattr(spec, key) or {}, (key,))

    def check(self, spec: Any, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        yield from _check_fields(spec, values, ("mode", "sandbox", "function", "count"))
        if placeholders(spec.snapshot) and (name := _resolve(spec.snapshot, values)) is not None:
            name = (spec.aliases or {}).get(name, name)
            if (problem := _problem("snapshot", name)) is not None:
                yield ("snapshot",), f"{problem} (from {spec.snapshot})"
        mode, sandbox = _resolve(spec.mode, values), _resolve(spec.sandbox, values)
        if spec.action is RestoreAction.RUN and sandbox in SANDBOXES and mode in MODES and mode not in SANDBOX_MODES:
            yield ("sandbox",), f"a restore into a sandbox is {' or '.join(SANDBOX_MODES)}, not {mode}"

    def session(self, target: Target, timeout: float) -> AbstractContextManager[Any]:
        return agent_session(target, timeout)

    def has_prepare(self, spec: Any) -> bool:
        return spec.action in (RestoreAction.RUN, RestoreAction.DEDUP) and spec.function is not None

    # --- steps --------------------------------------------------------------------------------

    def _key_lock(self, key: tuple[str, ...]) -> threading.Lock:
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())

    def snapshot_name(self, spec: RestoreSpec, values: Mapping[str, object]) -> str:
        name = substitute(spec.snapshot, values)
        return str((spec.aliases or {}).get(name, name))

    def prepare(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        return self._take(session, spec, values, replace_any=False)

    def _take(self, agent: Any, spec: RestoreSpec, values: Mapping[str, object], replace_any: bool) -> Outcome:
        """Take the snapshot on this node. replace_any=False (a workload's prepare): keep one this
        run took with the same function, env and warm-up; replace any other of that name."""
        snap = self.snapshot_name(spec, values)
        nonce, node = str(values.get("nonce", "")), str(values.get("node", ""))
        assert spec.function is not None
        function = substitute(spec.function, values)
        env = {k: substitute(v, values) for k, v in (spec.env or {}).items()}
        warm = substitute_value(spec.warm, values) if spec.warm is not None else None
        what = json.dumps([function, env, warm], sort_keys=True)
        key = (nonce, spec.mhd, snap)
        t0 = time.perf_counter()
        try:
            for problem in (_problem("snapshot", snap), _problem("function", function)):
                if problem is not None:
                    return Outcome(False, 0.0, error=problem)
            with self._key_lock(("take", *key)):
                listing, _ = request(agent, "store.list", mhd=spec.mhd)
                existing = next((r for r in listing or [] if isinstance(r, dict) and r.get("name") == snap), None)
                if existing is not None and not replace_any and self.taken.get(key) == what:
                    return Outcome(True, (time.perf_counter() - t0) * 1e3, result={
                        "snapshot": snap, "reused": True, "function": function, "head": existing.get("head"),
                        "seq": existing.get("seq"), "bytes": existing.get("bytes")})
                if existing is not None:
                    request(agent, "store.delete", mhd=spec.mhd, name=snap)
                with self.lock:  # nodes that prepared the old one must prepare again
                    self.prepared = {p for p in self.prepared if (p[0], p[2], p[3]) != key}
                args: dict[str, Any] = {"name": snap, "function": function, "mhd": spec.mhd}
                if warm is not None:
                    args["warm"] = warm
                if env:
                    args["env"] = env
                reply, _ = request(agent, "snap.take", **args)
                with self.lock:
                    self.taken[key] = what
                    self.prepared.add((nonce, node, spec.mhd, snap, True))  # taking leaves the full set here
        except _Refused as exc:
            return Outcome(False, (time.perf_counter() - t0) * 1e3, error=str(exc))
        res = take_result(reply)
        res.update(snapshot=snap, reused=False, replaced=existing is not None)
        return Outcome(True, (time.perf_counter() - t0) * 1e3, result=res)

    def ensure_prepared(self, agent: Any, values: Mapping[str, object], mhd: str, snap: str, full: bool) -> str | None:
        """snap.prepare on this node once per run (per snapshot taken): an error message or None."""
        nonce, node = str(values.get("nonce", "")), str(values.get("node", ""))
        key = (nonce, node, mhd, snap, full)
        with self._key_lock(("prepare", nonce, node, mhd, snap)):
            with self.lock:
                if key in self.prepared or (nonce, node, mhd, snap, True) in self.prepared:
                    return None
            try:
                request(agent, "snap.prepare", name=snap, mhd=mhd, full=full)
            except _Refused as exc:
                return f"preparing {snap} on {node}: {exc}"
            with self.lock:
                self.prepared.add(key)
        return None

    # --- invocations -----------------------------------------------------------------------------

    def invoke(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        if spec.action is RestoreAction.TAKE:
            return self._take(session, spec, values, replace_any=True)
        snap = self.snapshot_name(spec, values)
        if (problem := _problem("snapshot", snap)) is not None:
            return Outcome(False, 0.0, error=problem)
        if spec.action is RestoreAction.PREPARE:
            try:
                reply, ms = request(session, "snap.prepare", name=snap, mhd=spec.mhd, full=spec.full)
            except _Refused as exc:
                return Outcome(False, exc.ms, error=str(exc))
            with self.lock:
                self.prepared.add((str(values.get("nonce", "")), str(values.get("node", "")), spec.mhd, snap, spec.full))
            return Outcome(True, ms, result=reply if isinstance(reply, dict) else {"value": reply})
        mode = substitute(spec.mode, values)
        count = _as_int(substitute_value(spec.count, values))
        sandbox = substitute(spec.sandbox, values) if spec.sandbox is not None else None
        for what, value in (("mode", mode), ("count", count), ("sandbox", sandbox)):
            if value is not None and (problem := _problem(what, value)) is not None:
                return Outcome(False, 0.0, error=problem)
        assert count is not None
        if (error := self.ensure_prepared(session, values, spec.mhd, snap, mode in ("criu", "lazy"))) is not None:
            return Outcome(False, 0.0, error=error)
        event = substitute_value(spec.event, values) if spec.event is not None else None
        if spec.action is RestoreAction.DEDUP:
            return self._dedup(session, spec, values, snap, mode, count, event)
        args: dict[str, Any] = {"name": snap, "mode": mode, "count": count, "mhd": spec.mhd}
        if spec.requests != 1:
            args["requests"] = spec.requests
        if spec.populate:
            args["populate"] = True
        if event is not None:
            args["event"] = event
        if sandbox not in (None, *NO_SANDBOX):
            args["sandbox"] = sandbox
        try:
            reply, ms = request(session, "snap.run", **args)
        except _Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        ok, error, result, node_ms = run_result(reply, count)
        return Outcome(ok, ms, node_ms, None, result, error)

    def _dedup(self, agent: Any, spec: RestoreSpec, values: Mapping[str, object], snap: str, mode: str, count: int,
               event: Any) -> Outcome:
        args: dict[str, Any] = {"name": snap, "mode": mode, "count": count, "mhd": spec.mhd}
        if event is not None:
            args["event"] = event
        try:
            reply, ms = request(agent, "snap.dedup", **args)
        except _Refused as exc:
            return Outcome(False, exc.ms, error=str(exc))
        result, hashes = dedup_result(reply)
        unit = tuple(str(values.get(k, "")) for k in ("nonce", "mode", "workload", "rep"))
        with self.lock:
            for old in [k for k in self.ledger if k[0] != unit[0]]:  # an earlier run's units
                del self.ledger[old]
            per_node = self.ledger.setdefault(unit, {})
            per_node[str(values.get("node", ""))] = Counter(hashes)
            if len(per_node) > 1:
                result.update(cross_node(per_node))
        return Outcome(True, ms, None, None, result)


# --- sandbox ------------------------------------------------------------------------------------

class SandboxAction(StrEnum):
    RUN = "run"
    POOL = "pool"
    STOP = "stop"


@dataclass(frozen=True)
class SandboxSpec:
    action: SandboxAction = SandboxAction.RUN
    function: str | None = None  # a function of the catalog, or ${function}
    sandbox: str | None = None  # pool | fresh, or ${sandbox}
    event: Any = None
    env: Any = None  # pool only: crun's baseline runs with the catalog's env
    size: int | str | None = None  # pool: sandboxes kept ready
    max: int | None = None  # pool: most sandboxes in all
    on_exhausted: str | None = None  # pool: queue | fallback


SANDBOX_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "run": (("function", "sandbox"), ("event", "env")),
    "pool": (("size",), ("max", "on_exhausted")),
    "stop": ((), ()),
}


def sandbox_result(reply: dict[str, Any], sandbox: str) -> tuple[bool, str | None, dict[str, Any]]:
    """`tbagent sandbox run` (pool) or `tbagent sandbox oci` (fresh) output -> (ok, error, result)."""
    timings: dict[str, Any] = reply["timings"] if isinstance(reply.get("timings"), dict) else {}
    fn: dict[str, Any] = reply["reply"] if isinstance(reply.get("reply"), dict) else {}

    def ms(key: str) -> float | None:
        v: Any = timings.get(key)
        return float(v) * 1e3 if _number(v) else None

    phases: dict[str, float] = {}
    if sandbox == "pool":
        waited = float(reply["waited_s"]) * 1e3 if _number(reply.get("waited_s")) else 0.0
        phases["pick_ms"] = waited
        created = timings.get("created")
        if isinstance(created, dict) and _number(created.get("total")):  # none idle: made one (fallback)
            phases["create_ms"] = float(created["total"]) * 1e3
        steps: tuple[str, ...] = ("cgroup", "rootfs", "process", "function_init")
    else:
        waited = 0.0
        steps = ("rootfs_outer", "bundle", "create", "network", "process", "function_init")
    for step in steps:
        if (v := ms(step)) is not None:
            phases["rootfs_ms" if step == "rootfs_outer" else f"{step}_ms"] = v
    if _number(fn.get("run_s")):
        phases["run_ms"] = float(fn["run_s"]) * 1e3
    res: dict[str, Any] = {"sandbox": sandbox, "fresh": bool(reply.get("fresh", sandbox == "fresh")),
                           "ok_function": bool(fn.get("ok")), "result": fn.get("result")}
    for key, out in (("ready_sandbox", "sandbox_ms"), ("ready_function", "startup_ms")):
        if (v := ms(key)) is not None:
            res[out] = v + waited
    if "startup_ms" in res and "run_ms" in phases:
        res["e2e_ms"] = res["startup_ms"] + phases["run_ms"]
    if _number(fn.get("invoke_s")):
        res["first_request_ms"] = float(fn["invoke_s"]) * 1e3
    if _number(fn.get("run_s")):
        res["run_ms"] = float(fn["run_s"]) * 1e3
    release = reply.get("release")
    if isinstance(release, dict) and isinstance(release.get("timings"), dict):
        res["teardown_ms"] = sum(float(v) for v in release["timings"].values() if _number(v)) * 1e3
        res["clean"] = bool(release.get("clean", True))
    elif _number(reply.get("destroy_s")):
        res["teardown_ms"] = float(reply["destroy_s"]) * 1e3
    res["phases"] = phases
    res["timings"] = timings
    ok = bool(reply.get("ok")) and bool(fn.get("ok"))
    error = None if ok else str(fn.get("error") or reply.get("error") or "the sandbox run failed")
    return ok, error, res


class SandboxKind(Kind[Any, Any]):
    """The node's sandbox pool over `tbagent sandbox` (see the module's docstring)."""

    name = "sandbox"
    spec_type = SandboxSpec

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fresh_locks: dict[str, threading.Lock] = {}

    def parse(self, doc: Document, kp: KeyPath, raw: dict[str, Any]) -> Any:
        spec: SandboxSpec = from_mapping(doc, SandboxSpec, raw, kp)
        _parse_common(doc, kp, raw, str(spec.action), SANDBOX_KEYS, ("action",))
        _check_literals(doc, kp, spec, ("function", "sandbox", "size"))
        if spec.sandbox in NO_SANDBOX:
            raise doc.error((*kp, "sandbox"), f"expected {' or '.join(SANDBOXES)}")
        _mapping(doc, (*kp, "event"), spec.event, "a JSON object: the function's event")
        env = _env(doc, (*kp, "env"), spec.env)
        if env and spec.sandbox == "fresh":
            raise doc.error((*kp, "env"), "a fresh (crun) sandbox runs with the catalog's env only")
        if spec.max is not None and spec.max < 1:
            raise doc.error((*kp, "max"), f"must be at least 1, got {spec.max}")
        if spec.on_exhausted is not None and spec.on_exhausted not in POLICIES:
            raise doc.error((*kp, "on_exhausted"), f"expected one of {', '.join(POLICIES)}, got {spec.on_exhausted!r}")
        return replace(spec, env=env)

    def templates(self, spec: Any) -> Iterator[tuple[KeyPath, str]]:
        for key in ("function", "sandbox", "size"):
            if isinstance(getattr(spec, key), str):
                yield (key,), getattr(spec, key)
        for key in ("event", "env"):
            yield from template_strings(getattr(spec, key) or {}, (key,))

    def check(self, spec: Any, values: Mapping[str, object]) -> Iterator[tuple[KeyPath, str]]:
        yield from _check_fields(spec, values, ("function", "sandbox", "size"))
        if spec.sandbox is not None and _resolve(spec.sandbox, values) in NO_SANDBOX:
            yield ("sandbox",), f"expected {' or '.join(SANDBOXES)} (from {spec.sandbox})"
        if spec.env and _resolve(spec.sandbox, values) == "fresh":
            yield ("env",), "a fresh (crun) sandbox runs with the catalog's env only"

    def argv(self, spec: SandboxSpec, values: Mapping[str, object]) -> tuple[list[str], str | None]:
        """The command for this step or invocation, and the sandbox (pool | fresh) of a run."""
        if spec.action is SandboxAction.POOL:
            argv = ["tbagent", "sandbox", "pool", "--size", str(_as_int(substitute_value(spec.size, values)))]
            if spec.max is not None:
                argv += ["--max", str(spec.max)]
            if spec.on_exhausted is not None:
                argv += ["--on-exhausted", spec.on_exhausted]
            return argv, None
        if spec.action is SandboxAction.STOP:
            return ["tbagent", "sandbox", "stop"], None
        assert spec.function is not None and spec.sandbox is not None
        function, sandbox = substitute(spec.function, values), substitute(spec.sandbox, values)
        event = json.dumps(substitute_value(spec.event, values) if spec.event is not None else {})
        if sandbox == "fresh":
            return ["tbagent", "sandbox", "oci", function, "--event", event], sandbox
        env = [a for k, v in (spec.env or {}).items() for a in ("--env", f"{k}={substitute(v, values)}")]
        return ["tbagent", "sandbox", "run", function, "--event", event, *env], sandbox

    def _fresh_lock(self, node: str) -> threading.Lock:
        with self.lock:
            return self.fresh_locks.setdefault(node, threading.Lock())

    def invoke(self, session: Any, spec: Any, values: Mapping[str, object], timeout: float) -> Outcome:
        node: Node = session
        argv, sandbox = self.argv(spec, values)
        for what, value in (("function", argv[3] if sandbox else None), ("sandbox", sandbox),
                            ("size", argv[4] if spec.action is SandboxAction.POOL else None)):
            if value is not None and (problem := _problem(what, value)) is not None:
                return Outcome(False, 0.0, error=problem)
        if sandbox == "fresh":
            with self._fresh_lock(node.name):
                r, remote_ms, function_ms, stderr = run_argv(node, argv, timeout)
        else:
            r, remote_ms, function_ms, stderr = run_argv(node, argv, timeout)
        parsed = parse_result(r.stdout)
        if sandbox is None:  # pool or stop: a set-up step
            ok = r.exit_code == 0
            return Outcome(ok, remote_ms, function_ms, r.exit_code, parsed, None if ok else f"exit code {r.exit_code}",
                           None if ok else tail(stderr or r.stdout))
        if parsed is None:
            return Outcome(False, remote_ms, function_ms, r.exit_code, None,
                           f"exit code {r.exit_code}, no JSON result", tail(stderr or r.stdout))
        ok, error, result = sandbox_result(parsed, sandbox)
        return Outcome(ok, remote_ms, function_ms, r.exit_code, result, error, None if ok else tail(stderr or r.stdout))

