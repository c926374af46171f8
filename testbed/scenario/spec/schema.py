"""Scenario files: YAML to frozen dataclasses, validated before anything runs; every error
names file, line and field (the machinery of testbed.config.yamlfile, as for topologies).

    name: smoke
    testbed: ../testbeds/two-node.yaml   # relative to this file; or an inline topology mapping
    seed: 42
    repetitions: 1                       # every (mode, workload) unit is run this many times
    warmup: 1                            # invocations per unit before measuring (kept, flagged)
    timeout: 60s                         # per remote call (workloads and steps may override)
    params: {token: c0ffee}              # ${token} in argv/args; overridden by workload, mode, sweep
    placement: spread                    # node: X | spread: all|[X, Y] | create_on: X, invoke_on: [Y];
                                         # a mode's placement wins over a workload's, then this one
    setup:                               # run once, on `nodes` (all by default), in parallel
      - {name: mark, kind: exec, nodes: node0, argv: [tbagent, dax, write, mhd0, "4096", "${token}"]}
    modes:                               # the systems compared: name -> parameters
      near: {placement: {node: node0}, params: {size: 64}}
      far:  {placement: {node: node1}, params: {size: 64}, setup: [...]}
    workloads:
      - name: matmul
        kind: exec                       # a registered kind (testbed.scenario.kinds.base), + its keys
        argv: [python3, -c, "...", "${size}"]
        arrival: {pattern: poisson, rate: 2, duration: 10s}
        # fixed: count [, interval] | closed: clients, count or duration | poisson: rate, duration
        # | trace: file [, speed, limit] (a CSV of time,function in the scenario's folder or below;
        #   the function is ${function})
        sweep: {instances: [1, 2, 4]}    # expands into matmul[instances=1], ...
    metrics: [latency_ms, compute_ms]    # summarised; raw.jsonl keeps everything
    assertions: ["p99_ms < 500 for mode near", "ratio(memory, near, far) < 1.5"]
    parallel_workloads: false            # true: a mode's workloads run at the same time
    memory_interval: 0                   # > 0: also sample node memory during units

`${name}` placeholders: params, sweep keys and the built-ins below; `$$` is a literal `$`.
Overrides: `--set a.b.c=value` (value read as a YAML scalar; list items by index or name).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from testbed.config import topology as topo_mod
from testbed.config.topology import HostFacts, Topology
from testbed.config.yamlfile import Document, KeyPath, Refused, dotted, from_mapping, load_document, load_value
from testbed.errors import ConfigError, UserError
from testbed.scenario.kinds import KINDS
from testbed.scenario.kinds.base import NAME_RE as PARAM_RE
from testbed.scenario.kinds.base import placeholders
from testbed.scenario.spec import arrivals, assertions

SCENARIO_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")  # \Z: $ would allow a trailing newline
ITEM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}\Z")
# Built-in placeholders; `nonce` is 32 random hex digits, new for every `testbed run` process.
BUILTINS = ("mode", "workload", "function", "node", "rep", "seq", "client", "seed", "nonce")
# ASCII digits, a bounded count of them: \d takes any Unicode digit, and 400 digits overflow.
_DURATION_RE = re.compile(r"^\s*([0-9]{1,12}(?:\.[0-9]{1,12})?)\s*(ms|s|m|h)?\s*\Z")
# Longer than any run; beyond it socket and thread timeouts overflow their C types.
MAX_SECONDS = 7 * 24 * 3600.0
# Invocations one workload may plan (fixed count, rate x duration): a schedule is built in memory.
MAX_INVOCATIONS = 1_000_000
MAX_TRACE_BYTES = 16 << 20
MAX_SET_DEPTH = 16  # parts of a --set path: each may create a nested mapping
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
Scalar = str | int | float | bool


class Pattern(StrEnum):
    FIXED = "fixed"
    CLOSED = "closed"
    POISSON = "poisson"
    TRACE = "trace"


# --- what the YAML holds (strict mappings) ---------------------------------------------------

@dataclass(frozen=True)
class RawArrival:
    pattern: Pattern
    count: int | None = None
    interval: float | str | None = None
    clients: int | None = None
    duration: float | str | None = None
    rate: float | None = None
    file: str | None = None
    speed: float | None = None
    limit: int | None = None
    max_inflight: int | None = None


@dataclass(frozen=True)
class RawPlacement:
    node: str | None = None
    spread: str | tuple[str, ...] | None = None
    create_on: str | None = None
    invoke_on: str | tuple[str, ...] | None = None


@dataclass(frozen=True)
class RawScenario:
    name: str
    testbed: Any
    workloads: Any
    description: str = ""
    seed: int = 1
    repetitions: int = 1
    warmup: int = 0
    timeout: float | str = 60.0
    params: Any = None
    placement: Any = None
    setup: Any = None
    modes: Any = None
    metrics: tuple[str, ...] = ("latency_ms",)
    assertions: tuple[str, ...] = ()
    parallel_workloads: bool = False
    memory_interval: float | str = 0.0


# --- what the executor gets ------------------------------------------------------------------

@dataclass(frozen=True)
class Arrival:
    pattern: Pattern
    count: int | None = None
    interval: float = 0.0
    clients: int = 1
    duration: float | None = None
    rate: float | None = None
    trace_file: str | None = None
    trace: tuple[tuple[float, str], ...] = field(default=(), repr=False)
    speed: float = 1.0
    limit: int | None = None
    max_inflight: int = 32

    def schedule(self, rng: Any, function: str) -> arrivals.Schedule:
        if self.pattern is Pattern.FIXED:
            return arrivals.fixed(self.count or 0, self.interval, function)
        if self.pattern is Pattern.CLOSED:
            return arrivals.closed(self.clients, self.count, self.duration, function)
        if self.pattern is Pattern.POISSON:
            assert self.rate is not None and self.duration is not None
            return arrivals.poisson(self.rate, self.duration, rng, function)
        return arrivals.replay(self.trace, self.speed, self.limit)

    def planned(self) -> int | None:
        """Invocations the pattern will make, if known before running."""
        if self.pattern is Pattern.FIXED:
            return self.count
        if self.pattern is Pattern.TRACE:
            return len(self.trace) if self.limit is None else min(self.limit, len(self.trace))
        if self.pattern is Pattern.CLOSED and self.duration is None:
            return self.count
        return None


@dataclass(frozen=True)
class Placement:
    create_on: str  # where a kind's prepare step runs (e.g. a template is built)
    invoke_on: tuple[str, ...]  # invocations go round-robin over these (closed loop: per client)

    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.create_on, *self.invoke_on)))


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    spec: Any
    on: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Workload:
    name: str  # with the sweep values: matmul[instances=2]
    base: str  # as written: matmul
    kind: str
    spec: Any
    arrival: Arrival
    placement: Placement | None
    params: dict[str, Scalar]  # the workload's own, then the sweep values
    sweep: dict[str, Scalar]
    timeout: float
    warmup: int | None


@dataclass(frozen=True)
class Mode:
    name: str
    params: dict[str, Scalar]
    placement: Placement | None
    setup: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    description: str
    topology: Topology
    topology_file: str | None  # None: inline
    seed: int
    repetitions: int
    warmup: int
    timeout: float
    params: dict[str, Scalar]
    placement: Placement
    setup: tuple[Step, ...]
    modes: tuple[Mode, ...]
    workloads: tuple[Workload, ...]
    metrics: tuple[str, ...]
    assertions: tuple[assertions.Assertion, ...]
    parallel_workloads: bool
    memory_interval: float
    resolved: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    topology_doc: Document | None = field(repr=False, compare=False, default=None)

    def mode(self, name: str) -> Mode:
        return next(m for m in self.modes if m.name == name)

    def placement_of(self, mode: Mode, workload: Workload) -> Placement:
        """The most specific placement wins: the mode's, then the workload's, then the default."""
        return mode.placement or workload.placement or self.placement

    def values(self, mode: Mode, workload: Workload) -> dict[str, Scalar]:
        """Placeholder values (the built-ins per invocation are added by the executor)."""
        return {**self.params, **{k: v for k, v in workload.params.items() if k not in workload.sweep},
                **mode.params, **workload.sweep}

    def hash(self) -> str:
        """Identifies what would run: the resolved scenario, the topology and trace contents."""
        traces = sorted({w.arrival.trace_file or "" for w in self.workloads})
        blob = json.dumps([self.resolved, self.topology.text, [
            hashlib.sha256("\n".join(f"{t},{f}" for t, f in w.arrival.trace).encode()).hexdigest()
            for w in self.workloads if w.arrival.trace], traces], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check_host(self, host: HostFacts) -> None:
        if self.topology_doc is None:
            return
        if self.topology_file is None:
            with _prefixed("testbed"):
                topo_mod.check_host(self.topology_doc, self.topology, host)
        else:
            topo_mod.check_host(self.topology_doc, self.topology, host)


# --- overrides (--set) ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Overridden(Document):
    overridden: frozenset[KeyPath] = frozenset()

    def error(self, keypath: KeyPath, message: str) -> ConfigError:
        if any(keypath[: len(o)] == o for o in self.overridden):
            message += " (value from --set)"
        return super().error(keypath, message)


_INDEX_RE = re.compile(r"^[0-9]{1,9}\Z")


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _set_path(data: Any, path: str, value: Any) -> KeyPath:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise UserError(f"--set {path}=...: a dotted path such as repetitions or workloads.matmul.arrival.rate")
    if len(parts) > MAX_SET_DEPTH:
        raise UserError(f"--set {_cut(path)}: more than {MAX_SET_DEPTH} parts")
    node = data
    kp: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:  # a missing mapping is created
                    node[part] = {}
                node = node[part]
            kp.append(part)
        elif isinstance(node, list):
            # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
            if _INDEX_RE.match(part) and int(part) < len(node):
                idx = int(part)
            else:
                named = [j for j, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part]
                if not named:
                    raise UserError(f"--set {_cut(path)}: {dotted(tuple(kp))} has no item {_cut(part)!r} "
                                    f"(an index below {len(node)} or an item's name)")
                idx = named[0]
            if last:
                node[idx] = value
            else:
                node = node[idx]
            kp.append(idx)
        else:
            raise UserError(f"--set {_cut(path)}: {dotted(tuple(kp))} is a {type(node).__name__}, not a mapping or a list")
    return tuple(kp)


def apply_overrides(doc: Document, overrides: list[str]) -> Document:
    if not overrides:
        return doc
    data = copy.deepcopy(doc.data) if isinstance(doc.data, dict) else {}
    done: set[KeyPath] = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {_cut(item)!r}: expected KEY=VALUE")
        try:  # the file's loader and its bounds (aliases, depth, numbers, keys)
            value = load_value(text) if text.strip() else None
        except Refused as exc:
            raise UserError(f"--set {_cut(key)}: {exc.message}") from None
        except yaml.MarkedYAMLError as exc:
            raise UserError(f"--set {_cut(key)}: the value is not valid YAML: {exc.problem}") from None
        except yaml.reader.ReaderError as exc:
            raise UserError(f"--set {_cut(key)}: the value is not valid YAML: {exc.reason}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {_cut(key)}: the value is not valid YAML: {exc}") from None
        done.add(_set_path(data, key.strip(), value))
    return _Overridden(doc.path, data, doc.lines, doc.text, frozenset(done))


# --- parsing ------------------------------------------------------------------------------

class _prefixed:
    """Re-raise ConfigErrors of an embedded document with its field under `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ConfigError):
            fld = f"{self.prefix}.{exc.field}" if exc.field else self.prefix
            raise ConfigError(exc.path, exc.line, fld, exc.message) from None


def seconds(doc: Document, kp: KeyPath, value: float | str | None, *, allow_zero: bool = False) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            s = float(value)
        except OverflowError:
            s = math.inf
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)) is not None:
        s = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise doc.error(kp, f"expected a duration such as 30, 500ms, 10s or 2m, got {_cut(repr(value))}")
    # NaN compares false with everything: test for what is allowed, not for what is not.
    if not (0 <= s <= MAX_SECONDS) or (s == 0 and not allow_zero):
        raise doc.error(kp, f"must be {'at least' if allow_zero else 'more than'} 0 seconds and at most 7 days, "
                        f"got {_cut(repr(value))}")
    return s


def _referenced(doc: Document, kp: KeyPath, value: str, base: Path, what: str) -> Path:
    """A file a scenario names: relative to the scenario's folder; it must be a regular file."""
    if "\0" in value or len(value) > 1024 or any(len(part) > 255 for part in value.split("/")):
        raise doc.error(kp, f"not a usable path: {_cut(repr(value))}")
    path = Path(value) if Path(value).is_absolute() else base / value
    try:
        st = os.stat(path)
    except OSError:  # ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP, EACCES: all mean "not there for us"
        raise doc.error(kp, f"no {what} {_cut(str(path), 200)} (a relative path is relative to the scenario file)") from None
    if not stat.S_ISREG(st.st_mode):
        raise doc.error(kp, f"{_cut(str(path), 200)} is not a regular file")
    return path


def _topology(doc: Document, base: Path) -> tuple[Topology, Document, str | None]:
    value = doc.data.get("testbed")
    kp: KeyPath = ("testbed",)
    if isinstance(value, str):
        path = _referenced(doc, kp, value, base, "topology file")
        # A scenario may come from elsewhere: it names YAML files, not any file on the host.
        if path.suffix not in (".yaml", ".yml"):
            raise doc.error(kp, f"a topology file ends in .yaml or .yml, got {_cut(path.name)!r}")
        tdoc = load_document(path)
        if not isinstance(tdoc.data, dict):
            raise tdoc.error((), "expected a mapping at the top level")
        topo = topo_mod.parse(tdoc)
        return dataclasses.replace(topo, text=tdoc.text), tdoc, str(path)
    if isinstance(value, dict):
        lines = {k[1:]: v for k, v in doc.lines.items() if k[:1] == kp}
        sub = Document(doc.path, value, lines)
        with _prefixed("testbed"):
            topo = topo_mod.parse(sub)
        return dataclasses.replace(topo, source=f"{doc.path}#testbed", text=yaml.safe_dump(value, sort_keys=False)), sub, None
    raise doc.error(kp, "expected the path of a topology file or an inline topology mapping")


def _params(doc: Document, kp: KeyPath, value: Any) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(kp, f"expected a mapping of names to values, got {type(value).__name__}")
    out: dict[str, Scalar] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not PARAM_RE.match(k):
            raise doc.error((*kp, str(k)), "a parameter name is a letter or _ followed by letters, digits or _")
        if k in BUILTINS:
            raise doc.error((*kp, k), f"{k!r} is a built-in placeholder ({', '.join(BUILTINS)})")
        if not isinstance(v, str | int | float | bool):
            raise doc.error((*kp, k), f"expected a string, number or boolean, got {type(v).__name__}")
        out[k] = v
    return out


def _node_list(doc: Document, kp: KeyPath, value: str | tuple[str, ...], topo: Topology) -> tuple[str, ...]:
    known = [n.name for n in topo.nodes]
    if value == "all":
        return tuple(known)
    items = (value,) if isinstance(value, str) else value
    if not items:
        raise doc.error(kp, "needs at least one node")
    for i, n in enumerate(items):
        if not isinstance(n, str):
            raise doc.error((*kp, i), f"expected a node name, got {_cut(repr(n))}")
        if n not in known:
            raise doc.error(kp if isinstance(value, str) else (*kp, i), f"unknown node {n!r} (nodes: {', '.join(known)}, all)")
    if len(set(items)) != len(items):
        raise doc.error(kp, "a node is listed twice")
    return tuple(items)


def _one_node(doc: Document, kp: KeyPath, value: str, topo: Topology) -> str:
    if value == "all":  # `placement: all` reads as {node: all}
        raise doc.error(kp, "names one node; for every node use `spread: all` (or `placement: spread`)")
    (node,) = _node_list(doc, kp, value, topo)
    return node


def _placement(doc: Document, kp: KeyPath, value: Any, topo: Topology) -> Placement | None:
    if value is None:
        return None
    if value == "spread":
        value = {"spread": "all"}
    elif value == "all":
        raise doc.error(kp, "`placement: all` is not a placement: use `placement: spread` for every node, "
                        "or `placement: NODE` for one")
    elif isinstance(value, str):
        value = {"node": value}
    raw = from_mapping(doc, RawPlacement, value, kp)
    forms = [f for f, v in (("node", raw.node), ("spread", raw.spread)) if v is not None]
    if raw.create_on is not None or raw.invoke_on is not None:
        forms.append("create_on/invoke_on")
    if len(forms) != 1:
        raise doc.error(kp, "give exactly one of: node, spread, create_on/invoke_on" +
                        (f" (got {', '.join(forms)})" if forms else ""))
    if raw.node is not None:
        node = _one_node(doc, (*kp, "node"), raw.node, topo)
        return Placement(node, (node,))
    if raw.spread is not None:
        nodes = _node_list(doc, (*kp, "spread"), raw.spread, topo)
        return Placement(nodes[0], nodes)
    if raw.create_on is None or raw.invoke_on is None:
        missing = "create_on" if raw.create_on is None else "invoke_on"
        raise doc.error(kp, f"missing required key '{missing}' (create_on and invoke_on go together)")
    create = _one_node(doc, (*kp, "create_on"), raw.create_on, topo)
    return Placement(create, _node_list(doc, (*kp, "invoke_on"), raw.invoke_on, topo))


def _trace_path(doc: Document, kp: KeyPath, value: str, base: Path) -> Path:
    """A trace lies in the scenario's folder or below it, symlinks resolved: `testbed run` runs
    as root, and a trace names no other file on the host (nor has its lines echoed in errors)."""
    path = _referenced(doc, kp, value, base, "trace file")
    real = path.resolve()
    if not real.is_relative_to(base.resolve()):
        raise doc.error(kp, f"a trace file must lie in the scenario's folder {_cut(str(base), 200)} or below it")
    return real


def _arrival(doc: Document, kp: KeyPath, value: Any, base: Path) -> Arrival:
    if value is None:
        raise doc.error(kp, "missing: e.g. {pattern: fixed, count: 10} or {pattern: poisson, rate: 2, duration: 10s}")
    raw = from_mapping(doc, RawArrival, value, kp)
    allowed = {
        Pattern.FIXED: ({"count"}, {"interval", "max_inflight"}),
        Pattern.CLOSED: ({"clients"}, {"count", "duration"}),
        Pattern.POISSON: ({"rate", "duration"}, {"max_inflight"}),
        Pattern.TRACE: ({"file"}, {"speed", "limit", "max_inflight"}),
    }[raw.pattern]
    for f in dataclasses.fields(RawArrival):
        v = getattr(raw, f.name)
        if f.name == "pattern":
            continue
        if v is not None and f.name not in allowed[0] | allowed[1]:
            raise doc.error((*kp, f.name), f"not used by pattern {raw.pattern} "
                            f"(it takes {', '.join(sorted(allowed[0] | allowed[1]))})")
        if v is None and f.name in allowed[0]:
            raise doc.error(kp, f"pattern {raw.pattern} needs '{f.name}'")
    for key in ("count", "clients", "limit", "max_inflight"):
        v = getattr(raw, key)
        if v is not None and v < 1:
            raise doc.error((*kp, key), f"must be at least 1, got {v}")
        if v is not None and v > MAX_INVOCATIONS:
            raise doc.error((*kp, key), f"must be at most {MAX_INVOCATIONS}, got {v}")
    if raw.rate is not None and raw.rate <= 0:
        raise doc.error((*kp, "rate"), f"must be more than 0 per second, got {raw.rate}")
    if raw.speed is not None and raw.speed <= 0:
        raise doc.error((*kp, "speed"), f"must be more than 0, got {raw.speed}")
    duration = seconds(doc, (*kp, "duration"), raw.duration) if raw.duration is not None else None
    # The schedule of an open loop is built in memory before the unit starts.
    if raw.rate is not None and duration is not None and raw.rate * duration > MAX_INVOCATIONS:
        raise doc.error((*kp, "rate"), f"rate x duration plans more than {MAX_INVOCATIONS} invocations")
    if raw.pattern is Pattern.CLOSED and (raw.count is None) == (duration is None):
        raise doc.error(kp, "a closed loop takes exactly one of count and duration")
    interval = seconds(doc, (*kp, "interval"), raw.interval, allow_zero=True) if raw.interval is not None else 0.0
    trace: tuple[tuple[float, str], ...] = ()
    trace_file = None
    if raw.file is not None:
        path = _trace_path(doc, (*kp, "file"), raw.file, base)
        trace, trace_file = arrivals.load_trace(path, MAX_TRACE_BYTES), str(path)
    return Arrival(raw.pattern, raw.count, interval, raw.clients or 1, duration, raw.rate, trace_file, trace,
                   raw.speed or 1.0, raw.limit, raw.max_inflight or 32)


STEP_KEYS = ("name", "kind", "nodes", "timeout")
WORKLOAD_KEYS = ("name", "kind", "arrival", "placement", "params", "sweep", "timeout", "warmup")


def _kind_of(doc: Document, kp: KeyPath, raw: dict[str, Any], common: tuple[str, ...]) -> tuple[str, Any]:
    kind_name = raw.get("kind")
    if not isinstance(kind_name, str) or kind_name not in KINDS:  # a list is no key of a dict
        raise doc.error((*kp, "kind") if "kind" in raw else kp,
                        f"{'unknown kind ' + _cut(repr(kind_name)) if 'kind' in raw else 'missing required key kind'} "
                        f"(kinds: {', '.join(sorted(KINDS))})")
    kind = KINDS[kind_name]
    own = {f.name for f in dataclasses.fields(kind.spec_type)}
    for key in raw:
        if key not in common and key not in own:
            raise doc.error((*kp, str(key)), f"unknown key (known keys for kind {kind_name}: "
                            f"{', '.join(sorted(set(common) | own))})")
    return kind_name, kind.parse(doc, kp, {k: v for k, v in raw.items() if k not in common})


def _steps(doc: Document, kp: KeyPath, value: Any, topo: Topology, default_timeout: float) -> tuple[Step, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(kp, f"expected a list of steps, got {type(value).__name__}")
    out = []
    for i, raw in enumerate(value):
        skp = (*kp, i)
        if not isinstance(raw, dict):
            raise doc.error(skp, f"expected a mapping, got {type(raw).__name__}")
        kind, spec = _kind_of(doc, skp, raw, STEP_KEYS)
        name = raw.get("name", f"step{i}")
        if not isinstance(name, str) or not ITEM_RE.match(name):
            raise doc.error((*skp, "name"), f"expected a name of [a-z0-9_-] starting with a letter, got {name!r}")
        on = raw.get("nodes", "all")
        if not isinstance(on, str | list):
            raise doc.error((*skp, "nodes"), "expected a node name, a list of nodes, or all")
        nodes = _node_list(doc, (*skp, "nodes"), on if isinstance(on, str) else tuple(on), topo)
        timeout = seconds(doc, (*skp, "timeout"), raw["timeout"]) if "timeout" in raw else max(default_timeout, 300.0)
        out.append(Step(name, kind, spec, nodes, timeout))
    return tuple(out)


def _sweep(doc: Document, kp: KeyPath, value: Any) -> list[dict[str, Scalar]]:
    if value is None:
        return [{}]
    if not isinstance(value, dict) or not value:
        raise doc.error(kp, "expected a mapping of parameter names to lists of values")
    axes: list[list[tuple[str, Scalar]]] = []
    for k, vs in value.items():
        _params(doc, kp, {k: 0})
        if not isinstance(vs, list) or not vs:
            raise doc.error((*kp, k), "expected a non-empty list of values")
        _params(doc, (*kp, k), {f"v{i}": v for i, v in enumerate(vs)})
        if len(set(map(str, vs))) != len(vs):
            raise doc.error((*kp, k), "a value is listed twice")
        axes.append([(k, v) for v in vs])
    return [dict(combo) for combo in itertools.product(*axes)]


def _workloads(doc: Document, value: Any, topo: Topology, base: Path, timeout: float) -> list[tuple[Workload, KeyPath]]:
    kp: KeyPath = ("workloads",)
    if not isinstance(value, list) or not value:
        raise doc.error(kp, "expected a non-empty list of workloads")
    out: list[tuple[Workload, KeyPath]] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        wkp = (*kp, i)
        if not isinstance(raw, dict):
            raise doc.error(wkp, f"expected a mapping, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not ITEM_RE.match(name):
            raise doc.error((*wkp, "name") if "name" in raw else wkp,
                            f"expected a name of [a-z0-9_-] starting with a letter, got {name!r}")
        if name in seen:
            raise doc.error((*wkp, "name"), f"duplicate workload name {name!r}")
        seen.add(name)
        kind, spec = _kind_of(doc, wkp, raw, WORKLOAD_KEYS)
        arrival = _arrival(doc, (*wkp, "arrival"), raw.get("arrival"), base)
        placement = _placement(doc, (*wkp, "placement"), raw.get("placement"), topo)
        params = _params(doc, (*wkp, "params"), raw.get("params"))
        wtimeout = seconds(doc, (*wkp, "timeout"), raw["timeout"]) if "timeout" in raw else timeout
        warmup = raw.get("warmup")
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
            raise doc.error((*wkp, "warmup"), f"expected a count of at least 0, got {warmup!r}")
        for sweep in _sweep(doc, (*wkp, "sweep"), raw.get("sweep")):
            full = name + ("[" + ",".join(f"{k}={v}" for k, v in sweep.items()) + "]" if sweep else "")
            out.append((Workload(full, name, kind, spec, arrival, placement, {**params, **sweep}, sweep, wtimeout, warmup),
                        wkp))
    return out


def _modes(doc: Document, value: Any, topo: Topology, timeout: float) -> tuple[Mode, ...]:
    kp: KeyPath = ("modes",)
    if value is None:
        return (Mode("default", {}, None),)
    if isinstance(value, list):  # a plain list of names: modes without parameters
        value = {m: None for m in value} if all(isinstance(m, str) for m in value) else value
    if not isinstance(value, dict) or not value:
        raise doc.error(kp, "expected a mapping of mode names to {params, placement, setup}")
    out = []
    for name, raw in value.items():
        mkp = (*kp, str(name))
        if not isinstance(name, str) or not ITEM_RE.match(name):
            raise doc.error(mkp, f"expected a mode name of [a-z0-9_-] starting with a letter, got {name!r}")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise doc.error(mkp, f"expected a mapping with params, placement, setup; got {type(raw).__name__}")
        for key in raw:
            if key not in ("params", "placement", "setup"):
                raise doc.error((*mkp, str(key)), "unknown key (known keys: params, placement, setup)")
        out.append(Mode(name, _params(doc, (*mkp, "params"), raw.get("params")),
                        _placement(doc, (*mkp, "placement"), raw.get("placement"), topo),
                        _steps(doc, (*mkp, "setup"), raw.get("setup"), topo, timeout)))
    return tuple(out)


def _check_placeholders(doc: Document, scn: Scenario, wkps: dict[str, KeyPath],
                        step_kps: list[tuple[Step, KeyPath, dict[str, Scalar]]]) -> None:
    for w in scn.workloads:
        kind = KINDS[w.kind]
        for mode in scn.modes:
            values = scn.values(mode, w)
            known = set(BUILTINS) | set(values)
            for rel, text in kind.templates(w.spec):
                for name in placeholders(text):
                    if name not in known:
                        raise doc.error((*wkps[w.name], *rel), f"unknown placeholder ${{{name}}} in mode {mode.name} "
                                        f"(known: {', '.join(sorted(known))}; $$ is a literal $)")
            for rel, message in kind.check(w.spec, values):
                raise doc.error((*wkps[w.name], *rel), f"{message} in mode {mode.name}")
    for step, skp, values in step_kps:
        known = set(BUILTINS) | set(values)
        for rel, text in KINDS[step.kind].templates(step.spec):
            for name in placeholders(text):
                if name not in known:
                    raise doc.error((*skp, *rel), f"unknown placeholder ${{{name}}} (known: {', '.join(sorted(known))})")
        for rel, message in KINDS[step.kind].check(step.spec, values):
            raise doc.error((*skp, *rel), message)


def parse(doc: Document) -> Scenario:
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping at the top level")
    raw: RawScenario = from_mapping(doc, RawScenario, doc.data, ())
    if not SCENARIO_RE.match(raw.name):
        raise doc.error(("name",), f"expected 1-40 of [a-z0-9-] starting with a letter, got {raw.name!r}")
    base = Path(doc.path).resolve().parent
    topo, tdoc, tfile = _topology(doc, base)
    for key, v in (("seed", raw.seed), ("repetitions", raw.repetitions), ("warmup", raw.warmup)):
        if v < (1 if key == "repetitions" else 0):
            raise doc.error((key,), f"must be at least {1 if key == 'repetitions' else 0}, got {v}")
    timeout = seconds(doc, ("timeout",), raw.timeout)
    params = _params(doc, ("params",), raw.params)
    placement = _placement(doc, ("placement",), raw.placement, topo) or Placement(
        topo.nodes[0].name, tuple(n.name for n in topo.nodes))
    setup = _steps(doc, ("setup",), raw.setup, topo, timeout)
    modes = _modes(doc, raw.modes, topo, timeout)
    wl = _workloads(doc, raw.workloads, topo, base, timeout)
    workloads = tuple(w for w, _ in wl)
    for i, m in enumerate(raw.metrics):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", m):
            raise doc.error(("metrics", i), f"not a metric name: {m!r}")
    asserts = []
    mode_names = {m.name for m in modes}
    wl_names = {w.name for w in workloads} | {w.base for w in workloads}
    for i, text in enumerate(raw.assertions):
        try:
            a = assertions.parse(text)
        except assertions.AssertionSyntaxError as exc:
            raise doc.error(("assertions", i), f"{exc}: {text}") from None
        for m in sorted(a.mode_names() - mode_names):
            raise doc.error(("assertions", i), f"unknown mode {m!r} (modes: {', '.join(sorted(mode_names))})")
        for w in a.workloads:
            if w not in wl_names:
                raise doc.error(("assertions", i), f"unknown workload {w!r} (workloads: {', '.join(sorted(wl_names))})")
        asserts.append(a)
    memory_interval = seconds(doc, ("memory_interval",), raw.memory_interval, allow_zero=True)
    scn = Scenario(raw.name, doc.path, raw.description, topo, tfile, raw.seed, raw.repetitions, raw.warmup, timeout,
                   params, placement, setup, modes, workloads, tuple(dict.fromkeys(raw.metrics)), tuple(asserts),
                   raw.parallel_workloads, memory_interval, copy.deepcopy(doc.data), tdoc)
    steps: list[tuple[Step, KeyPath, dict[str, Scalar]]] = [(s, ("setup", i), dict(params)) for i, s in enumerate(setup)]
    for mode in modes:
        steps += [(s, ("modes", mode.name, "setup", i), {**params, **mode.params}) for i, s in enumerate(mode.setup)]
    _check_placeholders(doc, scn, {w.name: kp for w, kp in wl}, steps)
    return scn


def load(path: Path | str, overrides: list[str] | None = None, text: str | None = None) -> Scenario:
    doc = apply_overrides(load_document(path, text), list(overrides or []))
    return parse(doc)


__all__ = ["Arrival", "Mode", "Pattern", "Placement", "Scenario", "Step", "Workload", "apply_overrides", "load", "parse"]
