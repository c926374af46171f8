"""`testbed run`: bring the testbed up if needed, run the set-up steps and the (mode, workload,
repetition) units on the nodes, write the results folder, tear down what it brought up.

Concurrency: one SSH connection per node, shared by threads (each remote call is its own
channel); set-up steps run on their nodes in parallel; inside a unit, open-loop arrivals are
fired by a dispatcher into a worker pool and closed-loop clients are threads. Every remote call
has a timeout. The first node or agent failure (kinds.Failure) stops the run: the other threads
finish their current call and stop, the failure goes to failures.json, and the ExitStack closes
the connections and tears the testbed down. A unit is complete when its `unit` line is in
raw.jsonl; --resume skips complete units and drops the partial records of the others.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from testbed.errors import NodeError, TestbedError, UserError
from testbed.lifecycle import cxlpath, names
from testbed.scenario.kinds import KINDS
from testbed.scenario.kinds.base import Failure, Kind, Outcome, Target
from testbed.scenario.output import fidelity, plots, report, results
from testbed.scenario.spec import arrivals
from testbed.scenario.spec.assertions import check
from testbed.scenario.spec.schema import Mode, Scenario, Step, Workload

log = logging.getLogger("testbed")
MEMORY_TIMEOUT = 30.0


def _default_agent(node: Any, timeout: float) -> AbstractContextManager[Any]:
    from testbed.access.agent import AgentSession

    return AgentSession(node, timeout)


@dataclass
class Backend:
    """The side effects of a run; the CLI passes its (fakeable) Ops in."""

    up: Callable[..., Any]
    down: Callable[[str], Any]
    guest: Callable[..., Any]  # (node name, endpoint) -> context manager of a Node
    endpoint: Callable[..., Any]  # (layout, node state) -> endpoint
    host_facts: Callable[[], Any]
    agent: Callable[[Any, float], AbstractContextManager[Any]] = _default_agent
    host_meta: Callable[[], dict[str, Any]] = results.host_meta
    # state -> each head's CXL path as QEMU reports it (cxlpath.read_for_state)
    cxl_paths: Callable[[Any], list[dict[str, Any]]] = cxlpath.read_for_state
    console: Console = field(default_factory=lambda: Console(stderr=True))

    @classmethod
    def from_ops(cls, ops: Any) -> Backend:
        return cls(up=ops.up, down=ops.down, guest=ops.guest, endpoint=ops.endpoint, host_facts=ops.host_facts,
                   cxl_paths=ops.cxl_paths,
                   **({"agent": ops.agent_session} if getattr(ops, "agent_session", None) else {}))


@dataclass(frozen=True)
class Options:
    out: Path
    keep: bool = False
    resume: bool = False
    overrides: tuple[str, ...] = ()


@dataclass
class Outcomes:
    out: Path
    summary: dict[str, Any]
    failures: list[dict[str, Any]]
    ok: bool


def _meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            out[key] = int(rest.split()[0])
    return out


class _Sessions:
    """A kind's session per (thread, node), opened on first use, all closed at the unit's end."""

    def __init__(self, kind: Kind[Any, Any], targets: Mapping[str, Target], timeout: float) -> None:
        self.kind, self.targets, self.timeout = kind, targets, timeout
        self.local = threading.local()
        self.stack = ExitStack()
        self.lock = threading.Lock()

    def get(self, node: str) -> Any:
        held: dict[str, Any] = self.local.__dict__.setdefault("held", {})
        if node not in held:
            cm = self.kind.session(self.targets[node], self.timeout)
            held[node] = cm.__enter__()
            with self.lock:
                self.stack.push(cm)
        return held[node]

    def close(self) -> None:
        with self.lock:
            self.stack.close()


@dataclass
class _Unit:
    mode: Mode
    workload: Workload
    rep: int
    kind: Kind[Any, Any]
    values: dict[str, Any]
    invoke_on: tuple[str, ...]
    sessions: _Sessions
    task: TaskID | None = None
    t0: float = field(default_factory=time.monotonic)  # start of the measured invocations

    @property
    def key(self) -> dict[str, Any]:
        return {"mode": self.mode.name, "workload": self.workload.name, "rep": self.rep}


class Runner:
    def __init__(self, scn: Scenario, opts: Options, backend: Backend) -> None:
        self.scn, self.opts, self.backend = scn, opts, backend
        self.stop = threading.Event()
        self.failures: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.targets: dict[str, Target] = {}
        self.progress: Progress | None = None
        self.timings: dict[str, float] = {}
        self.nonce = secrets.token_hex(16)

    # --- bookkeeping ----------------------------------------------------------------------

    def fail(self, phase: str, where: str, exc: BaseException) -> None:
        """Record a failure and stop the run; failures after the first are marked as such
        (they are usually consequences: calls cut short when the connections close)."""
        with self.lock:
            self.failures.append({"time": results.now(), "phase": phase, "where": where,
                                  "type": type(exc).__name__, "error": str(exc) or type(exc).__name__,
                                  "after_stop": self.stop.is_set()})
            self.stop.set()

    def _task(self, description: str, total: int | None) -> TaskID | None:
        return self.progress.add_task(escape(description), total=total) if self.progress is not None else None

    def _advance(self, task: TaskID | None, n: int = 1) -> None:
        if self.progress is not None and task is not None:
            self.progress.advance(task, n)

    def _finish_task(self, task: TaskID | None, note: str = "") -> None:
        if self.progress is None or task is None:
            return
        t = next(x for x in self.progress.tasks if x.id == task)
        if note:
            self.progress.update(task, description=f"{t.description} [red]{note}[/]",
                                 total=t.total if t.total is not None else max(t.completed, 1))
        else:
            final = t.total if t.total is not None else max(t.completed, 1)
            self.progress.update(task, total=final, completed=final)

    # --- the folder -----------------------------------------------------------------------

    def prepare_folder(self) -> tuple[set[results.UnitKey], dict[str, Any]]:
        out = self.opts.out
        if self.opts.resume:
            if not (out / results.META).exists():
                raise UserError(f"--resume {out}: no {results.META}; not a results folder of `testbed run`")
            meta: dict[str, Any] = results.read_json(out / results.META)
            if meta.get("scenario", {}).get("hash") != self.scn.hash():
                raise UserError(f"--resume {out}: that run used a different scenario, topology or --set values "
                                f"(hash {meta.get('scenario', {}).get('hash')} != {self.scn.hash()})")
            done, dropped = results.keep_completed(out / results.RAW)
            meta.setdefault("resumed", []).append({"at": results.now(), "units_done": len(done), "records_dropped": dropped})
            return done, meta
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"--out {out}: exists and is not empty; choose another folder, or continue that run "
                            f"with --resume {out}")
        out.mkdir(parents=True, exist_ok=True)
        return set(), {"started": results.now()}

    def _meta(self, meta: dict[str, Any], state: Any, created: bool) -> None:
        scn = self.scn
        meta["scenario"] = {"name": scn.name, "file": scn.source, "description": scn.description, "hash": scn.hash(),
                            "seed": scn.seed, "repetitions": scn.repetitions, "warmup": scn.warmup,
                            "overrides": list(self.opts.overrides), "modes": [m.name for m in scn.modes],
                            "workloads": [w.name for w in scn.workloads], "resolved": scn.resolved}
        meta["topology"] = {"name": scn.topology.name, "file": scn.topology_file, "text": scn.topology.text}
        meta["seed"] = scn.seed
        meta.update(self.backend.host_meta())
        if state is not None:
            meta["testbed"] = {"name": state.testbed, "accelerator": state.accel,
                               "kernel": results.kernel_info(dict(state.kernel)), "image": state.image,
                               "nodes": list(state.nodes), "brought_up_by_run": created,
                               "kept": bool(self.opts.keep or not created), "timings": dict(state.timings)}
            meta["accelerator"] = state.accel
            meta["qemu"] = results.qemu_info(dict(getattr(state, "qemu", {}) or {}))
            self._fidelity(meta, state, "cxl_paths")

    def _fidelity(self, meta: dict[str, Any], state: Any, key: str) -> None:
        """Read each head's path back from QEMU and state what emulation distorts."""
        try:
            heads = self.backend.cxl_paths(state)
        except TestbedError as exc:
            heads = []
            self.failures.append({"time": results.now(), "phase": "cxl-paths", "where": "", "type": type(exc).__name__,
                                  "error": str(exc)})
        meta[key] = heads
        meta["emulation"] = {"accelerator": state.accel, "distortions": fidelity.distortions(
            state.accel, [*meta.get("cxl_paths", []), *meta.get("cxl_paths_end", [])])}

    # --- remote work ----------------------------------------------------------------------

    def connect(self, stack: ExitStack, state: Any) -> None:
        layout = names.Layout(self.scn.topology.name)
        for name in state.nodes:
            try:
                node = stack.enter_context(self.backend.guest(name, self.backend.endpoint(layout, state.nodes[name])))
                opener = getattr(node, "open", None)
                if opener is not None:
                    opener()
            except NodeError as exc:
                raise Failure(str(exc)) from exc
            except OSError as exc:  # paramiko raises socket errors from open()
                raise Failure(f"{name}: cannot connect: {exc}") from exc

            def agent(timeout: float, node: Any = node) -> AbstractContextManager[Any]:
                return self.backend.agent(node, timeout)

            self.targets[name] = Target(node, agent)

    def memory(self, key: dict[str, Any], nodes: Sequence[str], at: str, raw: results.RawLog) -> None:
        for name in nodes:
            node = self.targets[name].node
            try:
                r = node.run(["cat", "/proc/meminfo"], check=False, timeout=MEMORY_TIMEOUT)
            except NodeError as exc:
                raise Failure(str(exc)) from exc
            except Exception as exc:
                raise Failure(f"{name}: reading /proc/meminfo: {exc or type(exc).__name__}") from exc
            info = _meminfo(r.stdout)
            if "MemTotal" not in info or "MemAvailable" not in info:
                raise Failure(f"{name}: /proc/meminfo unreadable (exit code {r.exit_code})")
            raw.write({"type": "memory", **key, "node": name, "at": at, "time": results.now(),
                       "total_kb": info["MemTotal"], "available_kb": info["MemAvailable"],
                       "used_kb": info["MemTotal"] - info["MemAvailable"]})

    def steps(self, phase: str, steps: Sequence[Step], mode: Mode | None, raw: results.RawLog) -> None:
        if not steps:
            return
        task = self._task(phase, sum(len(s.on) for s in steps))
        for step in steps:
            kind = KINDS[step.kind]
            values: dict[str, Any] = {**self.scn.params, **(mode.params if mode else {}), "mode": mode.name if mode else "",
                                      "workload": "", "function": step.name, "rep": 0, "seq": 0, "client": 0,
                                      "seed": self.scn.seed, "nonce": self.nonce}

            def one(node: str, kind: Kind[Any, Any] = kind, step: Step = step, values: dict[str, Any] = values) -> None:
                with kind.session(self.targets[node], step.timeout) as session:
                    out = kind.invoke(session, step.spec, {**values, "node": node}, step.timeout)
                raw.write({"type": "setup", "phase": phase, "step": step.name, "mode": mode.name if mode else None,
                           "node": node, "ok": out.ok, "remote_ms": out.remote_ms, "function_ms": out.function_ms,
                           "exit_code": out.exit_code, "error": out.error, "output": out.output, "result": out.result})
                self._advance(task)
                if not out.ok:
                    raise Failure(f"{node}: step {step.name} failed: {out.error}" + (f": {out.output}" if out.output else ""))

            with ThreadPoolExecutor(max_workers=len(step.on)) as pool:
                futs = {n: pool.submit(one, n) for n in step.on}
            for node, fut in futs.items():
                if (exc := fut.exception()) is not None:
                    self.fail(phase, f"step {step.name} on {node}", exc)
            if self.stop.is_set():
                self._finish_task(task, "failed")
                raise _Stopped
        self._finish_task(task)

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
        metrics: dict[str, float] = {"latency_ms": out.remote_ms}
        if out.function_ms is not None:
            metrics["function_ms"] = out.function_ms
            metrics["transport_ms"] = out.remote_ms - out.function_ms
        if scheduled is not None:
            metrics["lateness_ms"] = max(0.0, (t_call - scheduled) * 1e3)
        for k, v in result.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in metrics:
                metrics[k] = v
        rec = {"type": "invocation", **u.key, "base": u.workload.base, "seq": seq, "client": client, "node": node,
               "function": function, "warmup": warmup, "start_s": round(t_call - u.t0, 6),
               "offset_s": None if scheduled is None else round(scheduled - u.t0, 6),
               "ok": out.ok, "exit_code": out.exit_code, "error": out.error,
               "output": out.output, "params": {k: v for k, v in u.values.items() if k not in ("mode", "workload", "rep", "seed", "nonce")},
               "phases": result.get("phases") if isinstance(result.get("phases"), dict) else None,
               "result": out.result, "metrics": metrics, "time": results.now()}
        metrics["dispatch_ms"] = max(0.0, (time.perf_counter() - t_enter) * 1e3 - out.remote_ms)
        raw.write(rec)
        self._advance(u.task)
        if failure is not None:
            raise failure

    def _open_loop(self, u: _Unit, raw: results.RawLog, events: Sequence[arrivals.Event]) -> None:
        if not events:
            return
        pool = ThreadPoolExecutor(max_workers=min(u.workload.arrival.max_inflight, len(events)))
        try:
            u.t0 = t0 = time.monotonic()
            for i, ev in enumerate(events):
                at = t0 + ev.offset
                delay = at - time.monotonic()
                if (delay > 0 and self.stop.wait(delay)) or self.stop.is_set():
                    break
                node = u.invoke_on[i % len(u.invoke_on)]
                pool.submit(self._guard, u, raw, node, i, -1, ev.function, at)
            pool.shutdown(wait=True)
        except BaseException:  # Ctrl-C: stop dispatching, do not wait for calls in flight
            self.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _closed_loop(self, u: _Unit, raw: results.RawLog, loop: arrivals.ClosedLoop) -> None:
        issued = itertools.count()
        u.t0 = time.monotonic()
        deadline = u.t0 + loop.duration if loop.duration is not None else None

        def client(c: int) -> None:
            node = u.invoke_on[c % len(u.invoke_on)]
            while not self.stop.is_set():
                seq = next(issued)
                if loop.count is not None and seq >= loop.count:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                self._guard(u, raw, node, seq, c, loop.function, None)

        pool = ThreadPoolExecutor(max_workers=loop.clients)
        try:
            for c in range(loop.clients):
                pool.submit(client, c)
            pool.shutdown(wait=True)
        except BaseException:
            self.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _guard(self, u: _Unit, raw: results.RawLog, node: str, seq: int, client: int, function: str,
               scheduled: float | None) -> None:
        """Run one invocation in a worker thread; a failure stops the run instead of vanishing."""
        if self.stop.is_set():
            return
        try:
            self.invoke(u, raw, node, seq, client, function, False, scheduled)
        except BaseException as exc:
            self.fail("unit", f"{u.mode.name}/{u.workload.name}/rep{u.rep} on {node}", exc)

    def unit(self, mode: Mode, wl: Workload, rep: int, raw: results.RawLog) -> None:
        scn = self.scn
        placement = scn.placement_of(mode, wl)
        kind = KINDS[wl.kind]
        schedule = wl.arrival.schedule(arrivals.unit_rng(scn.seed, mode.name, wl.name, rep), wl.base)
        values = {**scn.values(mode, wl), "mode": mode.name, "workload": wl.name, "rep": rep, "seed": scn.seed,
                  "nonce": self.nonce}
        warmup = wl.warmup if wl.warmup is not None else scn.warmup
        planned = len(schedule.events) if isinstance(schedule, arrivals.OpenLoop) else schedule.count
        task = self._task(f"{mode.name} · {wl.name} · rep {rep + 1}/{scn.repetitions}",
                          None if planned is None else planned + warmup)
        u = _Unit(mode, wl, rep, kind, values, placement.invoke_on, _Sessions(kind, self.targets, wl.timeout), task)
        where = f"{mode.name}/{wl.name}/rep{rep}"
        t0 = time.monotonic()
        sampling = threading.Event()
        sampler: threading.Thread | None = None
        try:
            self.memory(u.key, placement.nodes(), "before", raw)
            if kind.has_prepare(wl.spec):
                node = placement.create_on
                with kind.session(self.targets[node], wl.timeout) as session:
                    out = kind.prepare(session, wl.spec, {**values, "node": node, "seq": -1, "client": -1,
                                                          "function": wl.base}, wl.timeout)
                raw.write({"type": "prepare", **u.key, "node": node, "ok": out.ok, "remote_ms": out.remote_ms,
                           "function_ms": out.function_ms, "exit_code": out.exit_code, "error": out.error,
                           "output": out.output, "result": out.result})
                if not out.ok:
                    raise Failure(f"{node}: prepare failed: {out.error}" + (f": {out.output}" if out.output else ""))
            for i in range(warmup):
                if self.stop.is_set():
                    break
                self.invoke(u, raw, u.invoke_on[i % len(u.invoke_on)], i, 0, wl.base, True)
            if scn.memory_interval > 0:
                sampler = threading.Thread(target=self._sample, args=(u, placement.nodes(), raw, sampling), daemon=True)
                sampler.start()
            if isinstance(schedule, arrivals.OpenLoop):
                self._open_loop(u, raw, schedule.events)
            else:
                self._closed_loop(u, raw, schedule)
            sampling.set()
            if sampler is not None:
                sampler.join(MEMORY_TIMEOUT + 5)
            if not self.stop.is_set():
                self.memory(u.key, placement.nodes(), "after", raw)
        except Failure as exc:
            self.fail("unit", where, exc)
        finally:
            sampling.set()
            u.sessions.close()
        if self.stop.is_set():
            self._finish_task(task, "stopped")
            raise _Stopped
        raw.write({"type": "unit", **u.key, "status": "done", "wall_s": round(time.monotonic() - t0, 3),
                   "time": results.now()})
        self._finish_task(task)

    def _sample(self, u: _Unit, nodes: Sequence[str], raw: results.RawLog, done: threading.Event) -> None:
        while not done.wait(self.scn.memory_interval) and not self.stop.is_set():
            try:
                self.memory(u.key, nodes, "during", raw)
            except Failure as exc:
                self.fail("unit", f"{u.mode.name}/{u.workload.name}/rep{u.rep} memory", exc)
                return

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
        done, meta = self.prepare_folder()
        t_start = time.monotonic()
        state: Any = None
        created = False
        interrupted: BaseException | None = None
        raw = results.RawLog(out / results.RAW)
        try:
            with ExitStack() as stack:
                from testbed.ui.cli import PhaseProgress

                t = time.monotonic()
                with PhaseProgress(scn.topology.name, len(scn.topology.nodes)) as progress:
                    state, created = self.backend.up(scn.topology, progress)
                self.timings["up_s"] = round(time.monotonic() - t, 3)
                if created and not self.opts.keep:
                    stack.callback(self._down, scn.topology.name)
                self._meta(meta, state, created)
                results.write_json(out / results.META, meta)
                self.connect(stack, state)
                self.progress = stack.enter_context(Progress(
                    SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=self.backend.console, transient=False))
                t = time.monotonic()
                if done:
                    log.info("resuming: %d units already complete", len(done))
                self.steps("setup", scn.setup, None, raw)
                self.timings["setup_s"] = round(time.monotonic() - t, 3)
                t = time.monotonic()
                self.units(done, raw)
                self.timings["units_s"] = round(time.monotonic() - t, 3)
                # Read again while the testbed is up: a head that fell back during the run shows.
                self._fidelity(meta, state, "cxl_paths_end")
        except _Stopped:
            pass
        except Failure as exc:
            self.fail("connect", "", exc)
        except UserError:
            # Bad input found late (e.g. the testbed is up with another topology): nothing ran.
            raw.close()
            if not self.opts.resume and not results.read_raw(out / results.RAW):
                for f in (results.RAW, results.META):
                    (out / f).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out.rmdir()
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
        outcome = self.finish(meta, wall)
        if interrupted is not None:
            raise interrupted
        return outcome

    def _down(self, name: str) -> None:
        t = time.monotonic()
        self.backend.console.print(f"tearing down testbed {name}")
        try:
            self.backend.down(name)
        except TestbedError as exc:
            self.fail("down", name, exc)
        self.timings["down_s"] = round(time.monotonic() - t, 3)

    def finish(self, meta: dict[str, Any], wall: float) -> Outcomes:
        scn, out = self.scn, self.opts.out
        records = results.read_raw(out / results.RAW)
        modes = [m.name for m in scn.modes]
        workloads = [w.name for w in scn.workloads]
        metrics = list(dict.fromkeys([*scn.metrics, *(m for a in scn.assertions for m in sorted(a.metrics()))]))
        summary = results.summarize(records, modes, workloads, metrics)
        total = scn.repetitions * len(modes) * len(workloads)
        n_done = len(results.completed_units(records))
        summary["scenario"] = scn.name
        summary["units"] = {"done": n_done, "total": total}
        summary["complete"] = n_done == total
        summary["wall_s"] = round(wall, 3)
        summary["timings"] = dict(self.timings)
        data = results.RecordData(records)
        summary["assertions"] = []
        for a in scn.assertions:
            checks = check(a, data, modes, [(w.name, w.base) for w in scn.workloads])
            failed = [f"{c.mode + ' ' if c.mode else ''}{c.workload}: {c.detail}" for c in checks if not c.ok]
            summary["assertions"].append({"text": a.text, "ok": not failed, "failed": failed,
                                          "detail": "; ".join(f"{c.mode + ' ' if c.mode else ''}{c.workload}: {c.detail}"
                                                              for c in checks)[:2000]})
        summary["ok"] = summary["complete"] and not self.failures and all(a["ok"] for a in summary["assertions"])
        results.write_json(out / results.SUMMARY, summary)
        try:
            made = plots.render(records, modes, workloads, out)
        except (ValueError, OSError) as exc:
            made = []
            self.failures.append({"time": results.now(), "phase": "plots", "where": "", "type": type(exc).__name__,
                                  "error": str(exc)})
        results.write_json(out / results.FAILURES, self.failures)
        meta["ended"] = results.now()
        meta["wall_s"] = round(wall, 3)
        meta["timings"] = dict(self.timings)
        meta.setdefault("scenario", {"name": scn.name, "hash": scn.hash()})
        results.write_json(out / results.META, meta)
        (out / results.REPORT).write_text(report.markdown(summary, meta, self.failures, made), encoding="utf-8")
        return Outcomes(out, summary, list(self.failures), bool(summary["ok"]))


class _Stopped(Exception):
    """Raised to unwind after a failure was recorded."""


def run(scn: Scenario, opts: Options, backend: Backend) -> Outcomes:
    return Runner(scn, opts, backend).execute()
