"""The parts of a scenario file below the top level that are not workloads: durations, files
it names, the topology, parameters, placements and arrival patterns."""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from pathlib import Path

import yaml

from testbed.config import topology as topo_mod
from testbed.config.topology import Topology
from testbed.config.yamlfile import Document, KeyPath, Yaml, from_mapping, load_document
from testbed.scenario.kinds.base import NAME_RE as PARAM_RE
from testbed.scenario.spec import arrivals
from testbed.scenario.spec.model import (
    BUILTINS,
    DURATION_RE,
    DURATION_UNITS,
    MAX_INVOCATIONS,
    MAX_SECONDS,
    MAX_TRACE_BYTES,
    Arrival,
    Pattern,
    Placement,
    RawArrival,
    RawPlacement,
    Scalar,
    cut,
    prefixed,
)


def seconds(doc: Document, kp: KeyPath, value: float | str | None, *, allow_zero: bool = False) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            s = float(value)
        except OverflowError:
            s = math.inf
    elif isinstance(value, str) and (m := DURATION_RE.match(value)) is not None:
        s = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    else:
        raise doc.error(kp, f"expected a duration such as 30, 500ms, 10s or 2m, got {cut(repr(value))}")
    # NaN compares false with everything: test for what is allowed, not for what is not.
    if not (0 <= s <= MAX_SECONDS) or (s == 0 and not allow_zero):
        raise doc.error(kp, f"must be {'at least' if allow_zero else 'more than'} 0 seconds and at most 7 days, "
                        f"got {cut(repr(value))}")
    return s


def referenced(doc: Document, kp: KeyPath, value: str, base: Path, what: str) -> Path:
    """A file a scenario names: relative to the scenario's folder; it must be a regular file."""
    if "\0" in value or len(value) > 1024 or any(len(part) > 255 for part in value.split("/")):
        raise doc.error(kp, f"not a usable path: {cut(repr(value))}")
    path = Path(value) if Path(value).is_absolute() else base / value
    try:
        st = os.stat(path)
    except OSError:  # ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP, EACCES: all mean "not there for us"
        raise doc.error(kp, f"no {what} {cut(str(path), 200)} (a relative path is relative to the scenario file)") from None
    if not stat.S_ISREG(st.st_mode):
        raise doc.error(kp, f"{cut(str(path), 200)} is not a regular file")
    return path


def parse_topology(doc: Document, base: Path) -> tuple[Topology, Document, str | None]:
    value = doc.data.get("testbed")
    kp: KeyPath = ("testbed",)
    if isinstance(value, str):
        path = referenced(doc, kp, value, base, "topology file")
        # A scenario may come from elsewhere: it names YAML files, not any file on the host.
        if path.suffix not in (".yaml", ".yml"):
            raise doc.error(kp, f"a topology file ends in .yaml or .yml, got {cut(path.name)!r}")
        tdoc = load_document(path)
        if not isinstance(tdoc.data, dict):
            raise tdoc.error((), "expected a mapping at the top level")
        topo = topo_mod.parse(tdoc)
        return dataclasses.replace(topo, text=tdoc.text), tdoc, str(path)
    if isinstance(value, dict):
        lines = {k[1:]: v for k, v in doc.lines.items() if k[:1] == kp}
        sub = Document(doc.path, value, lines)
        with prefixed("testbed"):
            topo = topo_mod.parse(sub)
        return dataclasses.replace(topo, source=f"{doc.path}#testbed", text=yaml.safe_dump(value, sort_keys=False)), sub, None
    raise doc.error(kp, "expected the path of a topology file or an inline topology mapping")


def parse_params(doc: Document, kp: KeyPath, value: Yaml) -> dict[str, Scalar]:
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


def node_list(doc: Document, kp: KeyPath, value: str | tuple[str, ...], topo: Topology) -> tuple[str, ...]:
    known = [n.name for n in topo.nodes]
    if value == "all":
        return tuple(known)
    items = (value,) if isinstance(value, str) else value
    if not items:
        raise doc.error(kp, "needs at least one node")
    for i, n in enumerate(items):
        if not isinstance(n, str):
            raise doc.error((*kp, i), f"expected a node name, got {cut(repr(n))}")
        if n not in known:
            raise doc.error(kp if isinstance(value, str) else (*kp, i), f"unknown node {n!r} (nodes: {', '.join(known)}, all)")
    if len(set(items)) != len(items):
        raise doc.error(kp, "a node is listed twice")
    return tuple(items)


def one_node(doc: Document, kp: KeyPath, value: str, topo: Topology) -> str:
    if value == "all":  # `placement: all` reads as {node: all}
        raise doc.error(kp, "names one node; for every node use `spread: all` (or `placement: spread`)")
    (node,) = node_list(doc, kp, value, topo)
    return node


def parse_placement(doc: Document, kp: KeyPath, value: Yaml, topo: Topology) -> Placement | None:
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
        node = one_node(doc, (*kp, "node"), raw.node, topo)
        return Placement(node, (node,))
    if raw.spread is not None:
        nodes = node_list(doc, (*kp, "spread"), raw.spread, topo)
        return Placement(nodes[0], nodes)
    if raw.create_on is None or raw.invoke_on is None:
        missing = "create_on" if raw.create_on is None else "invoke_on"
        raise doc.error(kp, f"missing required key '{missing}' (create_on and invoke_on go together)")
    create = one_node(doc, (*kp, "create_on"), raw.create_on, topo)
    return Placement(create, node_list(doc, (*kp, "invoke_on"), raw.invoke_on, topo))


def trace_path(doc: Document, kp: KeyPath, value: str, base: Path) -> Path:
    """A trace lies in the scenario's folder or below it, symlinks resolved: `testbed run` runs
    as root, and a trace names no other file on the host (nor has its lines echoed in errors)."""
    path = referenced(doc, kp, value, base, "trace file")
    real = path.resolve()
    if not real.is_relative_to(base.resolve()):
        raise doc.error(kp, f"a trace file must lie in the scenario's folder {cut(str(base), 200)} or below it")
    return real


def parse_arrival(doc: Document, kp: KeyPath, value: Yaml, base: Path, seed: int = 0) -> Arrival:
    # seed: the scenario's, so a trace whose times are drawn (Azure 2019 per-minute counts) follows it
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
        path = trace_path(doc, (*kp, "file"), raw.file, base)
        trace, trace_file = arrivals.load_trace(path, MAX_TRACE_BYTES, seed=seed), str(path)
    return Arrival(raw.pattern, raw.count, interval, raw.clients or 1, duration, raw.rate, trace_file, trace,
                   raw.speed or 1.0, raw.limit, raw.max_inflight or 32)
