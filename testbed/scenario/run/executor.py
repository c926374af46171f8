"""`testbed run`: bring the testbed up if needed, run the set-up steps and the (mode, workload,
repetition) units on the nodes, write the results folder, tear down what it brought up.

The pieces: run.seam (what the run needs from the world), run.scheduler (when invocations
start), run.sessions (what clients hold per node), run.sampler (memory), run.bars (progress),
output.folder and output.summary (the results folder).

Concurrency: one SSH connection per node, shared by threads (each remote call is its own
channel); set-up steps run on their nodes in parallel; inside a unit, open-loop arrivals are
fired by a dispatcher into a worker pool and closed-loop clients are threads. Every remote call
has a timeout. The first node or agent failure (kinds.Failure) stops the run: the other threads
finish their current call and stop, the failure goes to failures.json, and the ExitStack closes
the connections and tears the testbed down. A unit is complete when its `unit` line is in
raw.jsonl; --resume skips complete units and drops the partial records of the others.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from tbproto.jsontypes import Json, JsonObject

from testbed.access.agent import Exchange
from testbed.access.node import Node
from testbed.errors import NodeError, TestbedError, UserError
from testbed.scenario.kinds import KINDS
from testbed.scenario.kinds.base import Agent, AnyKind, Failure, Outcome, Target
from testbed.scenario.output import folder, results, summary
from testbed.scenario.run import sampler, scheduler
from testbed.scenario.run.bars import Bars, TaskID
from testbed.scenario.run.seam import Backend, TestbedHandle
from testbed.scenario.run.sessions import Sessions
from testbed.scenario.spec import arrivals
from testbed.scenario.spec.schema import Mode, Scenario, Step, Workload

log = logging.getLogger("testbed")
Record = JsonObject  # a JSON record of raw.jsonl or failures.json


@dataclass(frozen=True)
class Options:
    out: Path
    keep: bool = False
    resume: bool = False
    overrides: tuple[str, ...] = ()
    keep_on_failure: bool = False  # a run with a failure leaves the testbed it brought up, to look at


@dataclass
class Outcomes:
    out: Path
    summary: Record
    failures: list[Record]
    ok: bool


@dataclass
class _Unit:
    mode: Mode
    workload: Workload
    rep: int
    kind: AnyKind
    values: dict[str, object]
    invoke_on: tuple[str, ...]
    sessions: Sessions
    task: TaskID | None = None
    t0: float = field(default_factory=time.monotonic)  # start of the measured invocations

    @property
    def key(self) -> Record:
        return {"mode": self.mode.name, "workload": self.workload.name, "rep": self.rep}

    @property
    def where(self) -> str:
        return f"{self.mode.name}/{self.workload.name}/rep{self.rep}"

    def started(self, t0: float) -> None:
        self.t0 = t0


class _Stopped(Exception):
    """Raised to unwind after a failure was recorded."""


def metrics_of(out: Outcome, scheduled: float | None, t_call: float) -> dict[str, float]:
    """An invocation's metrics: latency_ms (host-observed), the node's own function_ms and the
    agent's own guest_ms when known, transport_ms = latency - the node's own time, lateness_ms
    for an arrival at a scheduled time, then the result's numbers."""
    metrics: dict[str, float] = {"latency_ms": out.remote_ms}
    if out.function_ms is not None:
        metrics["function_ms"] = out.function_ms
        metrics["transport_ms"] = out.remote_ms - out.function_ms
    if out.guest_ms is not None:
        metrics["guest_ms"] = out.guest_ms
        metrics["transport_ms"] = out.remote_ms - out.guest_ms
    if scheduled is not None:
        metrics["lateness_ms"] = max(0.0, (t_call - scheduled) * 1e3)
    for k, v in (out.result or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in metrics:
            metrics[k] = v
    return metrics


class TimedAgent:
    """A shared agent client whose requests default to one workload's timeout."""

    def __init__(self, agent: Agent, timeout: float) -> None:
        self.agent, self.timeout = agent, timeout

    def exchange(self, op: str, args: Mapping[str, Json] | None = None, timeout: float | None = None) -> Exchange:
        return self.agent.exchange(op, args, self.timeout if timeout is None else timeout)


class Runner:
    def __init__(self, scn: Scenario, opts: Options, backend: Backend) -> None:
        self.scn, self.opts, self.backend = scn, opts, backend
        self.stop = threading.Event()
        self.failures: list[Record] = []
        self.lock = threading.Lock()
        self.targets: dict[str, Target] = {}
        self.bars = Bars(None)
        self.timings: dict[str, float] = {}
        self.nonce = secrets.token_hex(16)

    def fail(self, phase: str, where: str, exc: BaseException) -> None:
        """Record a failure and stop the run; failures after the first are marked as such
        (they are usually consequences: calls cut short when the connections close)."""
        with self.lock:
            self.failures.append({"time": results.now(), "phase": phase, "where": where,
                                  "type": type(exc).__name__, "error": str(exc) or type(exc).__name__,
                                  "after_stop": self.stop.is_set()})
            self.stop.set()

    def note(self, failure: Record | None) -> None:
        """A failure that does not stop the run (e.g. the CXL paths could not be read)."""
        if failure is not None:
            with self.lock:
                self.failures.append(failure)

    # --- the testbed ----------------------------------------------------------------------

    @contextmanager
    def testbed(self) -> Iterator[TestbedHandle]:
        """The testbed for the run; its teardown is timed, and a failure to tear down is recorded."""
        topo = self.scn.topology
        t = time.monotonic()
        with self.backend.progress(topo.name, len(topo.nodes)) as report:
            cm = self.backend.open_testbed(topo, self.opts.keep, report)
            stack = ExitStack()
            tb = stack.enter_context(cm)
        self.timings["up_s"] = round(time.monotonic() - t, 3)
        interrupted = left_up = False
        try:
            yield tb
        except KeyboardInterrupt:
            interrupted = True  # Ctrl-C always rolls back
            raise
        finally:
            if (self.opts.keep_on_failure and tb.created and not self.opts.keep and not interrupted
                    and (self.failures or sys.exc_info()[0] is not None)):
                tb.keep()
                left_up = True
                log.warning("the run failed; testbed %s was left up (--keep-on-failure): `testbed ssh -t %s NODE`, "
                            "`testbed console -t %s NODE`, `testbed down %s`", tb.name, tb.name, tb.name, tb.name)
            going = tb.created and not self.opts.keep and not left_up
            t = time.monotonic()
            if going:
                self.backend.console.print(f"tearing down testbed {tb.name}")
            try:
                stack.close()
            except TestbedError as exc:
                self.fail("down", tb.name, exc)
            if going:
                self.timings["down_s"] = round(time.monotonic() - t, 3)

    def connect(self, tb: TestbedHandle) -> None:
        for name in tb.state.nodes:
            try:
                node = tb.node(name)
            except NodeError as exc:
                raise Failure(str(exc)) from exc
            except OSError as exc:  # paramiko raises socket errors from open()
                raise Failure(f"{name}: cannot connect: {exc}") from exc
            self.targets[name] = Target(node, self._agent_opener(tb, name, node))
        # The state keeps CIDR notation (10.213.0.10/24): kinds get the address alone.
        addresses = {name: ns.address.split("/")[0] for name, ns in tb.state.nodes.items()}
        for kind in KINDS.values():  # kinds that reach a second node (a migration's target) get them all
            kind.attach(self.targets, addresses)

    def _agent_opener(self, tb: TestbedHandle, name: str, node: Node) -> Callable[[float], AbstractContextManager[Agent]]:
        def agent(timeout: float) -> AbstractContextManager[Agent]:
            # The testbed's client: one per node, shared by the unit's threads, closed by the
            # testbed; each request waits at most the workload's timeout.
            return nullcontext(TimedAgent(tb.agent(name), timeout))

        return agent

    # --- remote work ----------------------------------------------------------------------

    def memory(self, key: Record, nodes: Sequence[str], at: str, raw: results.RawLog) -> None:
        for name in nodes:
            m = sampler.read(self.targets[name].node)
            raw.write({"type": "memory", **key, "node": name, "at": at, "time": results.now(),
                       "total_kb": m.total_kb, "available_kb": m.available_kb, "used_kb": m.used_kb})

    def steps(self, phase: str, steps: Sequence[Step], mode: Mode | None, raw: results.RawLog) -> None:
        if not steps:
            return
        task = self.bars.task(phase, sum(len(s.on) for s in steps))
        for step in steps:
            kind = KINDS[step.kind]
            values: dict[str, object] = {**self.scn.params, **(mode.params if mode else {}),
                                         "mode": mode.name if mode else "", "workload": "", "function": step.name,
                                         "rep": 0, "seq": 0, "client": 0, "seed": self.scn.seed, "nonce": self.nonce}

            def one(node: str, kind: AnyKind = kind, step: Step = step, values: dict[str, object] = values) -> None:
                with kind.session(self.targets[node], step.timeout) as session:
                    out = kind.invoke(session, step.spec, {**values, "node": node}, step.timeout)
                raw.write({"type": "setup", "phase": phase, "step": step.name, "mode": mode.name if mode else None,
                           "node": node, "ok": out.ok, "remote_ms": out.remote_ms, "function_ms": out.function_ms,
                           "exit_code": out.exit_code, "error": out.error, "output": out.output, "result": out.result})
                self.bars.advance(task)
                if not out.ok:
                    raise Failure(f"{node}: step {step.name} failed: {out.error}" + (f": {out.output}" if out.output else ""))

            with ThreadPoolExecutor(max_workers=len(step.on)) as pool:
                futs = {n: pool.submit(one, n) for n in step.on}
            for node, fut in futs.items():
                if (exc := fut.exception()) is not None:
                    self.fail(phase, f"step {step.name} on {node}", exc)
            if self.stop.is_set():
                self.bars.finish(task, "failed")
                raise _Stopped
        self.bars.finish(task)

    def invoke(self, u: _Unit, raw: results.RawLog, node: str, seq: int, client: int, function: str,
               warmup: bool, scheduled: float | None = None) -> None:
        session = u.sessions.get(node)  # opening an agent session is not executor overhead
        t_enter = time.perf_counter()
        values = {**u.values, "node": node, "seq": seq, "client": client, "function": function}
        t_call = time.monotonic()
        failure: Failure | None = None
        try:
            out = u.kind.invoke(session, u.workload.spec, values, u.workload.timeout)
        except Failure as exc:
            failure = exc
            out = Outcome(False, (time.monotonic() - t_call) * 1e3, error=str(exc))
        result = out.result or {}
        metrics = metrics_of(out, scheduled, t_call)
        rec = {"type": "invocation", **u.key, "base": u.workload.base, "seq": seq, "client": client, "node": node,
               "function": function, "warmup": warmup, "start_s": round(t_call - u.t0, 6),
               "offset_s": None if scheduled is None else round(scheduled - u.t0, 6),
               "ok": out.ok, "exit_code": out.exit_code, "error": out.error,
               "output": out.output, "params": {k: v for k, v in u.values.items() if k not in ("mode", "workload", "rep", "seed", "nonce")},
               "phases": result.get("phases") if isinstance(result.get("phases"), dict) else None,
               "result": out.result, "metrics": metrics, "time": results.now()}
        metrics["dispatch_ms"] = max(0.0, (time.perf_counter() - t_enter) * 1e3 - out.remote_ms)
        raw.write(rec)
        self.bars.advance(u.task)
        if failure is not None:
            raise failure

    def guard(self, u: _Unit, raw: results.RawLog) -> scheduler.Call:
        """One invocation in a worker thread; a failure stops the run instead of vanishing."""
        def call(node: str, seq: int, client: int, function: str, scheduled: float | None) -> None:
            if self.stop.is_set():
                return
            try:
                self.invoke(u, raw, node, seq, client, function, False, scheduled)
            except BaseException as exc:
                self.fail("unit", f"{u.where} on {node}", exc)

        return call

    def prepare(self, u: _Unit, node: str, raw: results.RawLog) -> None:
        wl = u.workload
        with u.kind.session(self.targets[node], wl.timeout) as session:
            out = u.kind.prepare(session, wl.spec, {**u.values, "node": node, "seq": -1, "client": -1,
                                                    "function": wl.base}, wl.timeout)
        raw.write({"type": "prepare", **u.key, "node": node, "ok": out.ok, "remote_ms": out.remote_ms,
                   "function_ms": out.function_ms, "exit_code": out.exit_code, "error": out.error,
                   "output": out.output, "result": out.result})
        if not out.ok:
            raise Failure(f"{node}: prepare failed: {out.error}" + (f": {out.output}" if out.output else ""))

    def unit(self, mode: Mode, wl: Workload, rep: int, raw: results.RawLog) -> None:
        scn = self.scn
        placement = scn.placement_of(mode, wl)
        kind = KINDS[wl.kind]
        schedule = wl.arrival.schedule(arrivals.unit_rng(scn.seed, mode.name, wl.name, rep), wl.base)
        values: dict[str, object] = {**scn.values(mode, wl), "mode": mode.name, "workload": wl.name, "rep": rep, "seed": scn.seed,
                  "nonce": self.nonce}
        warmup = wl.warmup if wl.warmup is not None else scn.warmup
        planned = len(schedule.events) if isinstance(schedule, arrivals.OpenLoop) else schedule.count
        task = self.bars.task(f"{mode.name} · {wl.name} · rep {rep + 1}/{scn.repetitions}",
                              None if planned is None else planned + warmup)
        u = _Unit(mode, wl, rep, kind, values, placement.invoke_on, Sessions(kind, self.targets, wl.timeout), task)
        nodes = placement.nodes()
        t0 = time.monotonic()
        try:
            self.memory(u.key, nodes, "before", raw)
            if kind.has_prepare(wl.spec):
                self.prepare(u, placement.create_on, raw)
            for i in range(warmup):
                if self.stop.is_set():
                    break
                self.invoke(u, raw, u.invoke_on[i % len(u.invoke_on)], i, 0, wl.base, True)
            with sampler.Sampler(scn.memory_interval, lambda: self.memory(u.key, nodes, "during", raw), self.stop,
                                 lambda exc: self.fail("unit", f"{u.where} memory", exc)):
                if isinstance(schedule, arrivals.OpenLoop):
                    scheduler.open_loop(schedule.events, u.invoke_on, wl.arrival.max_inflight, self.stop,
                                        self.guard(u, raw), u.started)
                else:
                    scheduler.closed_loop(schedule, u.invoke_on, self.stop, self.guard(u, raw), u.started)
            if not self.stop.is_set():
                self.memory(u.key, nodes, "after", raw)
        except Failure as exc:
            self.fail("unit", u.where, exc)
        finally:
            u.sessions.close()
        if self.stop.is_set():
            self.bars.finish(task, "stopped")
            raise _Stopped
        raw.write({"type": "unit", **u.key, "status": "done", "wall_s": round(time.monotonic() - t0, 3),
                   "time": results.now()})
        self.bars.finish(task)

    def units(self, done: set[results.UnitKey], raw: results.RawLog) -> None:
        scn = self.scn
        set_up: set[str] = set()
        for rep in range(scn.repetitions):
            for mode in scn.modes:
                pending = [w for w in scn.workloads if (mode.name, w.name, rep) not in done]
                if not pending:
                    continue
                if mode.setup and mode.name not in set_up:
                    self.steps(f"setup {mode.name}", mode.setup, mode, raw)
                    set_up.add(mode.name)
                if scn.parallel_workloads and len(pending) > 1:
                    with ThreadPoolExecutor(max_workers=len(pending)) as pool:
                        futs = [pool.submit(self.unit, mode, w, rep, raw) for w in pending]
                    if any(isinstance(f.exception(), _Stopped) for f in futs) or self.stop.is_set():
                        raise _Stopped
                    for f in futs:
                        f.result()
                else:
                    for w in pending:
                        self.unit(mode, w, rep, raw)

    # --- the run --------------------------------------------------------------------------

    def execute(self) -> Outcomes:
        scn, out = self.scn, self.opts.out
        scn.check_host(self.backend.host_facts())
        done, meta = folder.prepare(out, self.opts.resume, scn.hash())
        t_start = time.monotonic()
        interrupted: BaseException | None = None
        raw = results.RawLog(out / results.RAW)
        try:
            with self.testbed() as tb:
                folder.scenario_meta(meta, scn, self.opts.overrides)
                meta.update(self.backend.host_meta())
                folder.testbed_meta(meta, tb.state, tb.created, self.opts.keep)
                self.note(folder.fidelity_meta(meta, tb.state, "cxl_paths", self.backend.cxl_paths))
                results.write_json(out / results.META, meta)
                self.connect(tb)
                with Bars.shown(self.backend.console) as self.bars:
                    t = time.monotonic()
                    if done:
                        log.info("resuming: %d units already complete", len(done))
                    self.steps("setup", scn.setup, None, raw)
                    self.timings["setup_s"] = round(time.monotonic() - t, 3)
                    t = time.monotonic()
                    self.units(done, raw)
                    self.timings["units_s"] = round(time.monotonic() - t, 3)
                # Read again while the testbed is up: a head that fell back during the run shows.
                self.note(folder.fidelity_meta(meta, tb.state, "cxl_paths_end", self.backend.cxl_paths))
        except _Stopped:
            pass
        except Failure as exc:
            self.fail("connect", "", exc)
        except UserError:
            # Bad input found late (e.g. the testbed is up with another topology): nothing ran.
            raw.close()
            folder.discard_if_unused(out, self.opts.resume)
            raise
        except TestbedError as exc:
            self.fail("run", "", exc)
        except KeyboardInterrupt as exc:
            interrupted = exc
            self.fail("run", "", KeyboardInterrupt("interrupted"))
        finally:
            self.stop.set()
            raw.close()
        wall = time.monotonic() - t_start
        s = summary.write(out, scn, meta, self.failures, self.timings, wall)
        outcome = Outcomes(out, s, list(self.failures), bool(s["ok"]))
        if interrupted is not None:
            raise interrupted
        return outcome


def run(scn: Scenario, opts: Options, backend: Backend) -> Outcomes:
    return Runner(scn, opts, backend).execute()
