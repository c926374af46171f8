"""The scenario as the executor gets it: frozen dataclasses (and the strict mappings of what
the YAML holds), the names and bounds every part of the schema checks against."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from enum import StrEnum

from testbed.config import topology as topo_mod
from testbed.config.topology import HostFacts, Topology
from testbed.config.yamlfile import Document, Yaml
from testbed.errors import ConfigError
from testbed.scenario.spec import arrivals, assertions

SCENARIO_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")  # \Z: $ would allow a trailing newline
ITEM_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}\Z")
# Built-in placeholders; `nonce` is 32 random hex digits, new for every `testbed run` process.
BUILTINS = ("mode", "workload", "function", "node", "rep", "seq", "client", "seed", "nonce")
# ASCII digits, a bounded count of them: \d takes any Unicode digit, and 400 digits overflow.
DURATION_RE = re.compile(r"^\s*([0-9]{1,12}(?:\.[0-9]{1,12})?)\s*(ms|s|m|h)?\s*\Z")
# Longer than any run; beyond it socket and thread timeouts overflow their C types.
MAX_SECONDS = 7 * 24 * 3600.0
# Invocations one workload may plan (fixed count, rate x duration): a schedule is built in memory.
MAX_INVOCATIONS = 1_000_000
MAX_TRACE_BYTES = 16 << 20
MAX_SET_DEPTH = 16  # parts of a --set path: each may create a nested mapping
DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
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
    testbed: Yaml
    workloads: Yaml
    description: str = ""
    seed: int = 1
    repetitions: int = 1
    warmup: int = 0
    timeout: float | str = 60.0
    params: Yaml = None
    placement: Yaml = None
    setup: Yaml = None
    modes: Yaml = None
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

    def schedule(self, rng: random.Random | None, function: str) -> arrivals.Schedule:  # rng: poisson's
        if self.pattern is Pattern.FIXED:
            return arrivals.fixed(self.count or 0, self.interval, function)
        if self.pattern is Pattern.CLOSED:
            return arrivals.closed(self.clients, self.count, self.duration, function)
        if self.pattern is Pattern.POISSON:
            assert self.rate is not None and self.duration is not None and rng is not None
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
    spec: object  # the kind's spec_type (a Kind[SpecT] parses it; varies with the kind)
    on: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Workload:
    name: str  # with the sweep values: matmul[instances=2]
    base: str  # as written: matmul
    kind: str
    spec: object  # the kind's spec_type (a Kind[SpecT] parses it; varies with the kind)
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
    resolved: dict[str, Yaml] = field(repr=False, compare=False, default_factory=dict)
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
            with prefixed("testbed"):
                topo_mod.check_host(self.topology_doc, self.topology, host)
        else:
            topo_mod.check_host(self.topology_doc, self.topology, host)


def cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class prefixed:
    """Re-raise ConfigErrors of an embedded document with its field under `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ConfigError):
            fld = f"{self.prefix}.{exc.field}" if exc.field else self.prefix
            raise ConfigError(exc.path, exc.line, fld, exc.message) from None
