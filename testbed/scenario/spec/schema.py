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
        kind: exec                       # a kind of the registry testbed.scenario.kinds, + its keys
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
import re
from pathlib import Path

from testbed.config.yamlfile import Document, KeyPath, from_mapping, load_document
from testbed.scenario.kinds import KINDS
from testbed.scenario.kinds.base import placeholders
from testbed.scenario.spec import assertions
from testbed.scenario.spec.fields import parse_params, parse_placement, parse_topology, seconds
from testbed.scenario.spec.items import parse_modes, parse_steps, parse_workloads
from testbed.scenario.spec.model import (
    BUILTINS,
    SCENARIO_RE,
    Arrival,
    Mode,
    Pattern,
    Placement,
    RawScenario,
    Scalar,
    Scenario,
    Step,
    Workload,
)
from testbed.scenario.spec.overrides import apply_overrides

__all__ = ["Arrival", "Mode", "Pattern", "Placement", "Scenario", "Step", "Workload", "apply_overrides", "load",
           "parse", "seconds"]


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
    topo, tdoc, tfile = parse_topology(doc, base)
    for key, v in (("seed", raw.seed), ("repetitions", raw.repetitions), ("warmup", raw.warmup)):
        if v < (1 if key == "repetitions" else 0):
            raise doc.error((key,), f"must be at least {1 if key == 'repetitions' else 0}, got {v}")
    timeout = seconds(doc, ("timeout",), raw.timeout)
    params = parse_params(doc, ("params",), raw.params)
    placement = parse_placement(doc, ("placement",), raw.placement, topo) or Placement(
        topo.nodes[0].name, tuple(n.name for n in topo.nodes))
    setup = parse_steps(doc, ("setup",), raw.setup, topo, timeout)
    modes = parse_modes(doc, raw.modes, topo, timeout)
    wl = parse_workloads(doc, raw.workloads, topo, base, timeout, raw.seed)
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
