"""Executor dispatch overhead at 1..64 simulated nodes: the real `testbed run` executor
(testbed/scenario/run/executor.py) driven through its seam (run/seam.py) with a fake testbed
whose agents answer an `agent` ping after a fixed delay, in the calling thread, like the
shared, multiplexed AgentClient of a real node. No VM, no SSH.

    python bench/dispatch.py [--nodes 1 4 16 64] [--runs 3] [--delay-ms 1] [--rate 2000]
                             [--duration 1] [--max-inflight 64] [--session-delay-ms MS] [--lift-cap]

Each run is one scenario with two workloads placed on every node: `open` (Poisson arrivals at
--rate per second over all nodes, at most --max-inflight at once) and `closed` (one client per
node, back to back, for --duration). Per (N, loop) the table gives medians over the runs of:
the median and P99 of dispatch_ms (executor time outside the remote call) and lateness_ms
(open loop: how late an arrival started against its schedule), invocations per second achieved,
the peak of threading.active_count() seen while the agents answered, the unit's wall time; and
the wall time of the whole run. Timings are printed, never asserted.

dispatch_ms does not cover what invoke() does before t_enter (run/sessions.py: the first use of
a node by a thread opens a session, which the agent kind checks with a ping) nor the raw.jsonl
write and progress update after it; those show as lateness (open loop) and as a lower rate
(closed loop). The count of session pings is printed per N; --session-delay-ms 0 answers them
at once, to separate their cost from the executor's.

topology.py refuses more than MAX_NODES nodes; --lift-cap raises that constant in this process
only, to see what the executor alone would do past it (the testbed itself cannot boot them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from tbproto.jsontypes import Json

from testbed.access.agent import Exchange
from testbed.access.node import Result
from testbed.config import topology as topo_mod
from testbed.config.topology import HostFacts, Topology
from testbed.errors import ConfigError, NodeError
from testbed.lifecycle import state as st
from testbed.scenario.kinds.base import Agent
from testbed.scenario.run import executor
from testbed.scenario.run.seam import Backend, PhaseReporter, TestbedHandle
from testbed.scenario.spec import schema

LOOPS = ("open", "closed")
MEMINFO = "MemTotal: 1048576 kB\nMemAvailable: 786432 kB\n"


@dataclass(frozen=True)
class Load:
    delay_s: float = 0.001  # each fake agent answers after this long
    rate: float = 2000.0  # open loop: arrivals per second over all nodes
    duration: float = 1.0  # seconds, of each loop
    max_inflight: int = 64  # open loop: calls at once (the executor's worker pool)
    session_delay_s: float | None = None  # the session-opening ping's delay; None: delay_s


class Meter:
    """What the fake agents saw, per loop: requests, and the most threads alive at a request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = dict.fromkeys(LOOPS, 0)
        self.peak_threads: dict[str, int] = dict.fromkeys(LOOPS, 0)
        self.session_pings = 0  # the check each new (thread, node) session makes before use

    def opened(self) -> None:
        with self.lock:
            self.session_pings += 1

    def saw(self, loop: str) -> None:
        threads = threading.active_count()
        with self.lock:
            self.requests[loop] += 1
            self.peak_threads[loop] = max(self.peak_threads[loop], threads)


class FakeAgent:
    """One per node, shared by every thread of the run, as the testbed's AgentClient is."""

    def __init__(self, node: str, delay: float, session_delay: float, meter: Meter) -> None:
        self.node, self.delay, self.session_delay, self.meter = node, delay, session_delay, meter

    def exchange(self, op: str, args: Mapping[str, Json] | None = None, timeout: float | None = None) -> Exchange:
        loop = (args or {}).get("loop")
        if op != "ping" or (args and loop not in LOOPS):
            raise AssertionError(f"{self.node}: unexpected request {op} {args}")
        if isinstance(loop, str):
            self.meter.saw(loop)
            time.sleep(self.delay)
        else:  # agent_session's ping without arguments
            self.meter.opened()
            time.sleep(self.session_delay)
        return Exchange({"pong": True, "node": self.node}, None)


class FakeNode:
    """Answers the executor's memory samples (cat /proc/meminfo) after the same delay."""

    def __init__(self, name: str, delay: float) -> None:
        self.name, self.delay = name, delay

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        if list(argv) != ["cat", "/proc/meminfo"]:
            raise NodeError(f"{self.name}: this fake node runs only cat /proc/meminfo, not {list(argv)}")
        time.sleep(self.delay)
        return Result(self.name, tuple(argv), 0, MEMINFO, "", self.delay)

    def put(self, local: Path, remote: str) -> None:
        raise NodeError(f"{self.name}: this fake node copies no files")

    def get(self, remote: str, local: Path) -> None:
        raise NodeError(f"{self.name}: this fake node copies no files")


class FakeTestbed:
    def __init__(self, topology: Topology, load: Load, meter: Meter) -> None:
        self.name, self.topology, self.created = topology.name, topology, True
        self.state = st.State(topology.name, topology.source, topology.text, "fake", st.Phase.UP, accel="tcg")
        self.state.nodes = {n.name: st.NodeState(n.name, f"fake-{n.name}", 4000 + n.index, n.address, [])
                            for n in topology.nodes}
        opening = load.delay_s if load.session_delay_s is None else load.session_delay_s
        self.nodes = {n: FakeNode(n, load.delay_s) for n in self.state.nodes}
        self.agents = {n: FakeAgent(n, load.delay_s, opening, meter) for n in self.state.nodes}

    def node(self, name: str) -> FakeNode:
        return self.nodes[name]

    def agent(self, name: str) -> Agent:
        return self.agents[name]

    def keep(self) -> None:
        pass


def backend(load: Load, meter: Meter) -> Backend:
    @contextlib.contextmanager
    def open_testbed(topology: Topology, keep: bool, progress: PhaseReporter) -> Iterator[TestbedHandle]:
        yield FakeTestbed(topology, load, meter)

    # A console that is not a terminal: the progress bars still run, nothing is drawn.
    return Backend(open_testbed=open_testbed, host_facts=lambda: HostFacts(1 << 50, 4096),
                   host_meta=lambda: {"host": {"cpu": "fake"}}, cxl_paths=lambda state: [],
                   console=Console(file=io.StringIO()))


@contextlib.contextmanager
def node_cap(lift_to: int | None) -> Iterator[None]:
    """topology.MAX_NODES, raised to lift_to for the duration (this process only)."""
    saved = topo_mod.MAX_NODES
    if lift_to is not None:
        topo_mod.MAX_NODES = max(saved, lift_to)
    try:
        yield
    finally:
        topo_mod.MAX_NODES = saved


def scenario_file(n: int, load: Load, tmp: Path) -> Path:
    """Both loops on every node of an inline n-node topology (a /24 holds 244 nodes from .10)."""
    ping = {"kind": "agent", "op": "ping", "placement": "spread"}
    doc = {
        "name": f"dispatch-{n}",
        "testbed": {"name": f"bdisp-{n}", "nodes": {"count": n}, "kernel": "debian", "image": "bookworm"},
        "seed": 7, "timeout": "30s", "warmup": 0,
        "workloads": [
            {"name": "open", **ping, "args": {"loop": "open"},
             "arrival": {"pattern": "poisson", "rate": load.rate, "duration": load.duration,
                         "max_inflight": load.max_inflight}},
            {"name": "closed", **ping, "args": {"loop": "closed"},
             "arrival": {"pattern": "closed", "clients": n, "duration": load.duration}},
        ],
        "metrics": ["latency_ms", "dispatch_ms", "lateness_ms"],
    }
    path = tmp / f"dispatch-{n}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass(frozen=True)
class LoopFigures:
    invocations: int
    requests: int  # what the fake agents counted: equals invocations unless a call was lost
    dispatch_p50: float
    dispatch_p99: float
    lateness_p50: float | None  # open loop only
    lateness_p99: float | None
    per_s: float  # invocations / (unit start to the last call's end)
    peak_threads: int
    unit_wall_s: float


@dataclass(frozen=True)
class RunFigures:
    nodes: int
    loops: dict[str, LoopFigures]
    wall_s: float
    threads_before: int
    session_pings: int
    units_s: float  # the executor's own timing of the units; the rest of wall_s is mostly the summary


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def run_once(n: int, load: Load, tmp: Path, lift_cap: bool = False) -> RunFigures:
    """One executor run at n nodes; ConfigError when the topology refuses n (the cap)."""
    with node_cap(n if lift_cap else None):
        scn = schema.load(scenario_file(n, load, tmp))
    meter = Meter()
    out = Path(tempfile.mkdtemp(prefix=f"run-{n}-", dir=tmp))
    before = threading.active_count()
    t0 = time.monotonic()
    outcome = executor.run(scn, executor.Options(out / "out"), backend(load, meter))
    wall = time.monotonic() - t0
    if not outcome.ok:
        raise RuntimeError(f"the run at {n} nodes failed: {json.dumps(outcome.failures)[:2000]}")
    recs = [json.loads(line) for line in (out / "out" / "raw.jsonl").read_text().splitlines()]
    loops: dict[str, LoopFigures] = {}
    for loop in LOOPS:
        inv = [r for r in recs if r["type"] == "invocation" and r["workload"] == loop]
        unit = next(r for r in recs if r["type"] == "unit" and r["workload"] == loop)
        if not inv:
            raise RuntimeError(f"no {loop}-loop invocations at {n} nodes")
        dispatch = [float(r["metrics"]["dispatch_ms"]) for r in inv]
        late = [float(r["metrics"]["lateness_ms"]) for r in inv if "lateness_ms" in r["metrics"]]
        span = max(float(r["start_s"]) + float(r["metrics"]["latency_ms"]) / 1e3 for r in inv)
        loops[loop] = LoopFigures(len(inv), meter.requests[loop], _pct(dispatch, 50), _pct(dispatch, 99),
                                  _pct(late, 50) if late else None, _pct(late, 99) if late else None,
                                  len(inv) / span if span > 0 else float("nan"), meter.peak_threads[loop],
                                  float(unit["wall_s"]))
    summary = json.loads((out / "out" / "summary.json").read_text())
    return RunFigures(n, loops, wall, before, meter.session_pings, float(summary["timings"]["units_s"]))


def _median(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def combine(runs: Sequence[RunFigures]) -> dict[str, dict[str, float | None]]:
    """Per loop, the median over runs of every figure; '' holds the run's wall time."""
    out: dict[str, dict[str, float | None]] = {}
    for loop in LOOPS:
        figs = [r.loops[loop] for r in runs]
        out[loop] = {k: _median([getattr(f, k) for f in figs])
                     for k in ("invocations", "dispatch_p50", "dispatch_p99", "lateness_p50", "lateness_p99",
                               "per_s", "peak_threads", "unit_wall_s")}
    out[""] = {"wall_s": _median([r.wall_s for r in runs]), "threads_before": _median([r.threads_before for r in runs]),
             "session_pings": _median([r.session_pings for r in runs]), "units_s": _median([r.units_s for r in runs])}
    return out


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: Sequence[tuple[int, dict[str, dict[str, float | None]]]]) -> str:
    lines = ["| nodes | loop | invocations | inv/s | dispatch_ms p50 | dispatch_ms p99 | lateness_ms p50 "
             "| lateness_ms p99 | threads peak | unit wall s | run units s | run wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, c in rows:
        for loop in LOOPS:
            f = c[loop]
            lines.append(f"| {n} | {loop} | {_f(f['invocations'], '.0f')} | {_f(f['per_s'], '.0f')} "
                         f"| {_f(f['dispatch_p50'])} | {_f(f['dispatch_p99'])} | {_f(f['lateness_p50'])} "
                         f"| {_f(f['lateness_p99'])} | {_f(f['peak_threads'], '.0f')} | {_f(f['unit_wall_s'], '.2f')} "
                         f"| {_f(c['']['units_s'], '.2f')} | {_f(c['']['wall_s'], '.2f')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--max-inflight", type=int, default=64)
    ap.add_argument("--session-delay-ms", type=float, default=None,
                    help="delay of the ping that opens each (thread, node) session (default: --delay-ms)")
    ap.add_argument("--lift-cap", action="store_true", help="measure past topology.MAX_NODES (this process only)")
    args = ap.parse_args()
    if args.runs < 1 or args.delay_ms < 0 or args.duration <= 0 or args.rate <= 0 or args.max_inflight < 1:
        ap.error("--runs and --max-inflight at least 1, --rate and --duration positive, --delay-ms not negative")
    if args.session_delay_ms is not None and args.session_delay_ms < 0:
        ap.error("--session-delay-ms must not be negative")
    load = Load(args.delay_ms / 1e3, args.rate, args.duration, args.max_inflight,
                None if args.session_delay_ms is None else args.session_delay_ms / 1e3)
    print(f"load: agent delay {args.delay_ms:g} ms, open loop {args.rate:g}/s max_inflight {args.max_inflight}, "
          f"closed loop one client per node, {args.duration:g} s each; session ping "
          f"{args.delay_ms if args.session_delay_ms is None else args.session_delay_ms:g} ms; {args.runs} runs; "
          f"topology.MAX_NODES={topo_mod.MAX_NODES}", flush=True)
    rows: list[tuple[int, dict[str, dict[str, float | None]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nodes:
            try:
                runs = [run_once(n, load, Path(tmp), args.lift_cap) for _ in range(args.runs)]
            except ConfigError as exc:
                print(f"nodes={n}: refused by the topology ({exc}); --lift-cap measures the executor past it",
                      flush=True)
                continue
            for r in runs:
                lost = {lp: (f.invocations, f.requests) for lp, f in r.loops.items() if f.invocations != f.requests}
                if lost:
                    raise SystemExit(f"nodes={n}: invocations and agent requests differ: {lost}")
            c = combine(runs)
            rows.append((n, c))
            print(f"nodes={n}{' (cap lifted)' if n > topo_mod.MAX_NODES else ''} runs={len(runs)} "
                  f"threads_before={_f(c['']['threads_before'], '.0f')} "
                  f"session_pings={_f(c['']['session_pings'], '.0f')} wall_s={_f(c['']['wall_s'], '.2f')}", flush=True)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
