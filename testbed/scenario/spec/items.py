"""The lists of a scenario file: set-up steps, workloads (with their sweeps) and modes; each
item's kind parses its own keys."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from testbed.config.topology import Topology
from testbed.config.yamlfile import Document, KeyPath, Yaml
from testbed.scenario.kinds import KINDS
from testbed.scenario.spec.fields import node_list, parse_arrival, parse_params, parse_placement, seconds
from testbed.scenario.spec.model import ITEM_RE, Mode, Scalar, Step, Workload, cut

STEP_KEYS = ("name", "kind", "nodes", "timeout")
WORKLOAD_KEYS = ("name", "kind", "arrival", "placement", "params", "sweep", "timeout", "warmup")


def kind_of(doc: Document, kp: KeyPath, raw: dict[str, Yaml], common: tuple[str, ...]) -> tuple[str, object]:
    kind_name = raw.get("kind")
    if not isinstance(kind_name, str) or kind_name not in KINDS:  # a list is no key of a dict
        raise doc.error((*kp, "kind") if "kind" in raw else kp,
                        f"{'unknown kind ' + cut(repr(kind_name)) if 'kind' in raw else 'missing required key kind'} "
                        f"(kinds: {', '.join(sorted(KINDS))})")
    kind = KINDS[kind_name]
    own = {f.name for f in dataclasses.fields(kind.spec_type)}
    for key in raw:
        if key not in common and key not in own:
            raise doc.error((*kp, str(key)), f"unknown key (known keys for kind {kind_name}: "
                            f"{', '.join(sorted(set(common) | own))})")
    return kind_name, kind.parse(doc, kp, {k: v for k, v in raw.items() if k not in common})


def parse_steps(doc: Document, kp: KeyPath, value: Yaml, topo: Topology, default_timeout: float) -> tuple[Step, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise doc.error(kp, f"expected a list of steps, got {type(value).__name__}")
    out = []
    for i, raw in enumerate(value):
        skp = (*kp, i)
        if not isinstance(raw, dict):
            raise doc.error(skp, f"expected a mapping, got {type(raw).__name__}")
        kind, spec = kind_of(doc, skp, raw, STEP_KEYS)
        name = raw.get("name", f"step{i}")
        if not isinstance(name, str) or not ITEM_RE.match(name):
            raise doc.error((*skp, "name"), f"expected a name of [a-z0-9_-] starting with a letter, got {name!r}")
        on = raw.get("nodes", "all")
        if not isinstance(on, str | list):
            raise doc.error((*skp, "nodes"), "expected a node name, a list of nodes, or all")
        nodes = node_list(doc, (*skp, "nodes"), on if isinstance(on, str) else tuple(on), topo)
        timeout = seconds(doc, (*skp, "timeout"), raw["timeout"]) if "timeout" in raw else max(default_timeout, 300.0)
        out.append(Step(name, kind, spec, nodes, timeout))
    return tuple(out)


def sweep_values(doc: Document, kp: KeyPath, value: Yaml) -> list[dict[str, Scalar]]:
    if value is None:
        return [{}]
    if not isinstance(value, dict) or not value:
        raise doc.error(kp, "expected a mapping of parameter names to lists of values")
    axes: list[list[tuple[str, Scalar]]] = []
    for k, vs in value.items():
        parse_params(doc, kp, {k: 0})
        if not isinstance(vs, list) or not vs:
            raise doc.error((*kp, k), "expected a non-empty list of values")
        parse_params(doc, (*kp, k), {f"v{i}": v for i, v in enumerate(vs)})
        if len(set(map(str, vs))) != len(vs):
            raise doc.error((*kp, k), "a value is listed twice")
        axes.append([(k, v) for v in vs])
    return [dict(combo) for combo in itertools.product(*axes)]


def parse_workloads(doc: Document, value: Yaml, topo: Topology, base: Path, timeout: float,
                    seed: int = 0) -> list[tuple[Workload, KeyPath]]:
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
        kind, spec = kind_of(doc, wkp, raw, WORKLOAD_KEYS)
        arrival = parse_arrival(doc, (*wkp, "arrival"), raw.get("arrival"), base, seed)
        placement = parse_placement(doc, (*wkp, "placement"), raw.get("placement"), topo)
        params = parse_params(doc, (*wkp, "params"), raw.get("params"))
        wtimeout = seconds(doc, (*wkp, "timeout"), raw["timeout"]) if "timeout" in raw else timeout
        warmup = raw.get("warmup")
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
            raise doc.error((*wkp, "warmup"), f"expected a count of at least 0, got {warmup!r}")
        for sweep in sweep_values(doc, (*wkp, "sweep"), raw.get("sweep")):
            full = name + ("[" + ",".join(f"{k}={v}" for k, v in sweep.items()) + "]" if sweep else "")
            out.append((Workload(full, name, kind, spec, arrival, placement, {**params, **sweep}, sweep, wtimeout, warmup),
                        wkp))
    return out


def parse_modes(doc: Document, value: Yaml, topo: Topology, timeout: float) -> tuple[Mode, ...]:
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
        out.append(Mode(name, parse_params(doc, (*mkp, "params"), raw.get("params")),
                        parse_placement(doc, (*mkp, "placement"), raw.get("placement"), topo),
                        parse_steps(doc, (*mkp, "setup"), raw.get("setup"), topo, timeout)))
    return tuple(out)
