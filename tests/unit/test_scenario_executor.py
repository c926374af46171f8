"""`testbed run` end to end against fake nodes (no VMs): artefacts, failures, resume, teardown."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import libvirt_qemu
import pytest

from testbed.access.agent import AgentError, Exchange
from testbed.access.node import ChannelNode, Result
from testbed.config.topology import HostFacts
from testbed.errors import NodeError
from testbed.lifecycle import cxlpath
from testbed.lifecycle import state as st
from testbed.ui import cli

from .fakenodes import NoChannels
from .qmp_replay import Conn, monitor

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


class World:
    """Fake nodes and agents; counts what ran."""

    def __init__(self, created: bool = True, qemu_variant: str = "patched-direct") -> None:
        self.created = created
        self.qemu_variant = qemu_variant  # which recorded QMP replies the nodes' QEMU gives
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.downs: list[str] = []
        self.flaky_left = 0  # `flaky` commands that die before they start to work
        self.lock = threading.Lock()

    def run(self, node: str, argv: Sequence[str], timeout: float | None) -> Result:
        argv = list(argv)
        if argv == ["cat", "/proc/meminfo"]:
            return Result(node, tuple(argv), 0, "MemTotal: 1000000 kB\nMemAvailable:  800000 kB\n", "", 0.0)
        assert argv[:2] == ["sh", "-c"] and argv[3] == "sh", argv  # the timer wrapper
        cmd = argv[4:]
        with self.lock:
            self.calls.append((node, tuple(cmd)))
            flaky = cmd[0] == "flaky" and self.flaky_left > 0
            if flaky:
                self.flaky_left -= 1
        t0 = time.time_ns()
        if cmd[0] == "die" or flaky:
            raise NodeError(f"{node}: connection lost")
        if cmd[0] == "hang":
            time.sleep(0.05)
            raise TimeoutError("timed out")
        if cmd[0] == "slow":
            time.sleep(0.1)
        time.sleep(0.002)
        code = 3 if cmd[0] == "fail" else 0
        out = json.dumps({"node": node, "arg": cmd[1:], "compute_ms": 1.5, "instances": len(cmd),
                          "phases": {"a_ms": 1.0, "b_ms": 0.5}}) + "\n"
        return Result(node, tuple(argv), code, out, f"\n@@cxltb-timer {t0} {time.time_ns()}\n", 0.0)


class FakeNode(NoChannels):
    def __init__(self, world: World, name: str) -> None:
        self.world, self.name = world, name

    def open(self) -> None:
        pass

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None, stream: bool = False) -> Result:
        return self.world.run(self.name, argv, timeout)


class FakeAgent:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        if op == "boom":
            raise AgentError(self.node.name, op, "bad-args", "no")
        return Exchange({"op": op, "args": dict(args or {}), "node": self.node.name}, None)


def make_ops(world: World) -> cli.Ops:
    def up(topo: Any, progress: Any) -> tuple[st.State, bool]:
        s = st.State(topo.name, topo.source, topo.text, "h", st.Phase.UP, accel="tcg",
                     kernel={"kind": "debian", "release": "6.12-test"})
        s.nodes = {n.name: st.NodeState(n.name, f"cxltb-{topo.name}_{n.name}", 4000 + i, n.address, ["mhd0"])
                   for i, n in enumerate(topo.nodes)}
        progress("boot", "fake")
        return s, world.created

    @contextlib.contextmanager
    def guest(name: str, ep: Any) -> Iterator[FakeNode]:
        yield FakeNode(world, name)

    @contextlib.contextmanager
    def agent(node: ChannelNode, timeout: float) -> Iterator[FakeAgent]:
        assert isinstance(node, FakeNode)
        yield FakeAgent(node)

    def cxl_paths(state: st.State) -> list[dict[str, Any]]:
        # What the real reader makes of QMP replies recorded from a patched QEMU on the direct path.
        conn = Conn({ns.domain: world.qemu_variant for ns in state.nodes.values()})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(libvirt_qemu, "qemuMonitorCommand", monitor)
            return [h.as_dict() for h in cxlpath.for_state(conn, state)]

    return cli.Ops(up=up, up_keeping=up, down=world.downs.append, connect=guest,
                   host_facts=lambda: HostFacts(64 << 30, 8), agent=agent, cxl_paths=cxl_paths)


SCENARIO = f"""\
name: fake
testbed: {REPO / "testbeds" / "two-node.yaml"}
seed: 5
warmup: 1
timeout: 5s
setup:
  - {{name: prep, kind: exec, argv: [ok, setup]}}
modes:
  a: {{placement: {{node: node0}}}}
  b: {{placement: {{node: node1}}, params: {{x: 2}}}}
params: {{x: 1}}
workloads:
  - {{name: fixed, kind: exec, argv: [ok, "${{x}}", "${{mode}}"], arrival: {{pattern: fixed, count: 3}}}}
  - {{name: pois, kind: exec, argv: [ok], arrival: {{pattern: poisson, rate: 40, duration: 0.3s}}}}
  - {{name: loop, kind: exec, argv: [ok], arrival: {{pattern: closed, clients: 3, count: 7}}, placement: spread}}
  - {{name: ping, kind: agent, op: ping, args: {{n: "${{x}}"}}, arrival: {{pattern: closed, clients: 2, duration: 0.05s}}}}
  - {{name: swept, kind: exec, argv: [ok, "${{k}}"], sweep: {{k: [1, 2]}}, arrival: {{pattern: fixed, count: 2}}}}
metrics: [latency_ms, function_ms, compute_ms]
assertions:
  - "error_rate == 0"
  - "p99_ms < 5000 for mode a"
  - "ratio(median(compute_ms), a, b) == 1 for workload fixed"
"""


def scenario(tmp_path: Path, text: str = SCENARIO) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def raw(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "raw.jsonl").read_text().splitlines()]


def test_run_writes_every_artefact(tmp_path: Path) -> None:
    world = World()
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path)), "--out", str(out)], ops=make_ops(world)) == 0
    assert world.downs == ["two-node"]  # it brought the testbed up, so it tears it down
    for f in ("raw.jsonl", "summary.json", "meta.json", "failures.json", "report.md", "latency_cdf.png",
              "memory_instances.png", "startup_breakdown.png"):
        assert (out / f).exists(), f
    assert (out / "latency_cdf.png").read_bytes()[:8] == PNG
    recs = raw(out)
    units = [r for r in recs if r["type"] == "unit"]
    assert len(units) == 2 * 6  # 2 modes x (4 workloads + 2 sweep values), one repetition
    inv = [r for r in recs if r["type"] == "invocation"]
    fixed_a = [r for r in inv if (r["mode"], r["workload"]) == ("a", "fixed")]
    assert [r["warmup"] for r in fixed_a] == [True, False, False, False]
    assert all(r["node"] == "node0" for r in fixed_a)
    assert ("node1", ("ok", "2", "b")) in world.calls  # mode b's params and the mode placeholder
    loop_nodes = {r["node"] for r in inv if (r["mode"], r["workload"]) == ("a", "loop")}
    assert loop_nodes == {"node0"}  # the mode's placement wins over the workload's (spread)
    ping = [r for r in inv if r["workload"] == "ping" and r["mode"] == "b" and not r["warmup"]]
    assert ping and ping[0]["result"]["args"] == {"n": 2} and ping[0]["result"]["op"] == "ping"
    assert all(isinstance(r["metrics"]["dispatch_ms"], float) and r["metrics"]["dispatch_ms"] >= 0 for r in inv)
    assert all("function_ms" in r["metrics"] and "transport_ms" in r["metrics"] for r in inv if r["workload"] != "ping")
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] and s["complete"] and s["units"] == {"done": 12, "total": 12}
    assert s["modes"]["a"]["workloads"]["fixed"]["count"] == 3
    assert s["modes"]["a"]["workloads"]["fixed"]["metrics"]["latency_ms"]["count"] == 3
    assert s["modes"]["a"]["memory_kb"] == 200000
    assert s["executor"]["dispatch_ms_median"] is not None and s["executor"]["transport_ms_median"] is not None
    assert [a["ok"] for a in s["assertions"]] == [True, True, True]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scenario"]["name"] == "fake" and meta["scenario"]["resolved"]["seed"] == 5 and meta["seed"] == 5
    assert meta["accelerator"] == "tcg" and meta["testbed"]["kernel"]["release"] == "6.12-test"
    assert "mhd0" in meta["topology"]["text"] and meta["started"] and meta["ended"]
    assert {"git", "qemu", "libvirt", "host"} <= set(meta) and "cpu" in meta["host"]
    assert json.loads((out / "failures.json").read_text()) == []
    report = (out / "report.md").read_text()
    assert "### fixed" in report and "| mode | n | errors | metric | median |" in report
    assert "| a | 3 | 0 | latency_ms |" in report and "![latency_cdf.png](latency_cdf.png)" in report
    # `testbed report` reads the folder back.
    assert cli.main(["report", str(out)], ops=make_ops(world)) == 0


def test_node_failure_stops_cleanly_and_tears_down(tmp_path: Path) -> None:
    world = World()
    text = SCENARIO.replace("argv: [ok], arrival: {pattern: poisson", "argv: [die], arrival: {pattern: poisson")
    out = tmp_path / "out"
    t0 = time.monotonic()
    assert cli.main(["run", str(scenario(tmp_path, text)), "--out", str(out)], ops=make_ops(world)) == 1
    assert time.monotonic() - t0 < 30
    assert world.downs == ["two-node"]
    failures = json.loads((out / "failures.json").read_text())
    assert failures[0]["where"] == "a/pois/rep0" and "connection lost" in failures[0]["error"]
    s = json.loads((out / "summary.json").read_text())
    assert not s["ok"] and not s["complete"] and s["units"]["done"] == 1  # only a/fixed finished
    assert not any(r["type"] == "invocation" and r["mode"] == "b" for r in raw(out))  # nothing ran after it
    assert "## Failures" in (out / "report.md").read_text()


def test_keep_on_failure_leaves_a_failed_run_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    failing = SCENARIO.replace("argv: [ok], arrival: {pattern: poisson", "argv: [die], arrival: {pattern: poisson")
    world = World()
    args = ["run", str(scenario(tmp_path, failing)), "--out", str(tmp_path / "out"), "--keep-on-failure"]
    assert cli.main(args, ops=make_ops(world)) == 1
    assert world.downs == []  # left up to look at
    assert "testbed two-node was left up (--keep-on-failure)" in caplog.text
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert "down_s" not in meta["timings"]
    # a run that succeeds still tears down what it brought up
    ok = World()
    args = ["run", str(scenario(tmp_path)), "--out", str(tmp_path / "ok"), "--keep-on-failure"]
    assert cli.main(args, ops=make_ops(ok)) == 0
    assert ok.downs == ["two-node"]


def test_function_errors_are_recorded_not_fatal(tmp_path: Path) -> None:
    world = World()
    text = SCENARIO.replace('argv: [ok, "${x}", "${mode}"]', "argv: [fail]")
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path, text)), "--out", str(out)], ops=make_ops(world)) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] and s["modes"]["a"]["workloads"]["fixed"]["errors"] == 3
    assert [a["ok"] for a in s["assertions"]] == [False, False, False]  # errors, and so no latency values
    assert json.loads((out / "failures.json").read_text()) == []


def test_timeout_and_agent_errors(tmp_path: Path) -> None:
    world = World()
    text = SCENARIO.replace("op: ping", "op: boom").replace('argv: [ok, "${k}"]', "argv: [hang]")
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path, text)), "--out", str(out)], ops=make_ops(world)) == 1
    recs = raw(out)
    boom = [r for r in recs if r["type"] == "invocation" and r["workload"] == "ping"]
    assert boom and not any(r["ok"] for r in boom) and "bad-args" in boom[0]["error"]  # an agent error: recorded
    failures = json.loads((out / "failures.json").read_text())
    assert failures[0]["where"].startswith("a/swept[k=1]") and "timed out" in failures[0]["error"]


def test_resume_skips_completed_units(tmp_path: Path) -> None:
    world = World()
    world.flaky_left = 1
    text = SCENARIO.replace("argv: [ok], arrival: {pattern: closed", "argv: [flaky], arrival: {pattern: closed")
    path = scenario(tmp_path, text)
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out)], ops=make_ops(world)) == 1
    first = raw(out)
    done_first = {(r["mode"], r["workload"]) for r in first if r["type"] == "unit"}
    assert done_first == {("a", "fixed"), ("a", "pois")}
    calls_before = len(world.calls)
    assert cli.main(["run", str(path), "--resume", str(out)], ops=make_ops(world)) == 0
    resumed = world.calls[calls_before:]
    assert not any(c[1][0] == "ok" and c[1][1:] == ("1", "a") for c in resumed)  # a/fixed did not run again
    recs = raw(out)
    units = [(r["mode"], r["workload"]) for r in recs if r["type"] == "unit"]
    assert len(units) == len(set(units)) == 12
    loop_a = [r for r in recs if r["type"] == "invocation" and (r["mode"], r["workload"]) == ("a", "loop")]
    assert len([r for r in loop_a if not r["warmup"]]) == 7  # the interrupted unit's partial records were dropped
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] and s["complete"]
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["resumed"]) == 1 and meta["resumed"][0]["units_done"] == 2


def test_resume_refuses_another_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = World()
    path = scenario(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out)], ops=make_ops(world)) == 0
    assert cli.main(["run", str(path), "--resume", str(out), "--set", "seed=6"], ops=make_ops(world)) == 2
    assert "different scenario" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--out", str(out)], ops=make_ops(world)) == 2  # not empty


def test_testbed_already_up_or_keep_is_left_up(tmp_path: Path) -> None:
    world = World(created=False)
    assert cli.main(["run", str(scenario(tmp_path)), "--out", str(tmp_path / "o1")], ops=make_ops(world)) == 0
    assert world.downs == []
    world = World(created=True)
    assert cli.main(["run", str(scenario(tmp_path)), "--out", str(tmp_path / "o2"), "--keep"], ops=make_ops(world)) == 0
    assert world.downs == []


def test_trace_is_replayed_on_time(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    events = [(0.0, "f1"), (0.1, "f2"), (0.1, "f3"), (0.35, "f1"), (0.6, "f2")]
    trace.write_text("time,function\n" + "".join(f"{t},{f}\n" for t, f in events))
    text = f"""\
name: tr
testbed: {REPO / "testbeds" / "two-node.yaml"}
workloads:
  - {{name: t, kind: exec, argv: [ok, "${{function}}"], arrival: {{pattern: trace, file: t.csv, speed: 2}}}}
"""
    world = World()
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path, text)), "--out", str(out)], ops=make_ops(world)) == 0
    inv = sorted((r for r in raw(out) if r["type"] == "invocation"), key=lambda r: r["seq"])
    assert [r["function"] for r in inv] == [f for _, f in events]
    assert [r["offset_s"] for r in inv] == [t / 2 for t, _ in events]
    assert all(0 <= r["start_s"] - r["offset_s"] < 0.2 for r in inv)


def test_bad_scenario_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, SCENARIO.replace("seed: 5", "seed: five"))
    assert cli.main(["run", str(p)], ops=make_ops(World())) == 2
    assert capsys.readouterr().err.strip() == f"testbed: error: {p}:3: seed: expected an integer, got 'five'"


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt even where the test runner was started with it ignored
    (a background job of a non-interactive shell: Python then installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_stops_records_and_tears_down(tmp_path: Path, sigint_raises: None) -> None:
    world = World()
    text = SCENARIO.replace("argv: [ok], arrival: {pattern: closed, clients: 3, count: 7}",
                            "argv: [slow], arrival: {pattern: closed, clients: 3, count: 600}")
    out = tmp_path / "out"
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(1.5, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    try:
        code = cli.main(["run", str(scenario(tmp_path, text)), "--out", str(out)], ops=make_ops(world))
    finally:
        timer.cancel()
    assert code == 130 and time.monotonic() - t0 < 20
    assert world.downs == ["two-node"]
    failures = json.loads((out / "failures.json").read_text())
    assert failures[0]["error"] == "interrupted"
    s = json.loads((out / "summary.json").read_text())
    assert not s["complete"] and s["units"]["done"] == 2  # a/fixed and a/pois; a/loop was cut short
    time.sleep(0.3)
    assert not [th for th in threading.enumerate() if th.name.startswith("ThreadPoolExecutor")]


def test_parallel_workloads_and_memory_sampling(tmp_path: Path) -> None:
    world = World()
    out = tmp_path / "out"
    args = ["run", str(scenario(tmp_path)), "--out", str(out), "--set", "parallel_workloads=true",
            "--set", "memory_interval=50ms", "--set", "repetitions=2"]
    assert cli.main(args, ops=make_ops(world)) == 0
    recs = raw(out)
    assert len([r for r in recs if r["type"] == "unit"]) == 24
    assert any(r["type"] == "memory" and r["at"] == "during" for r in recs)
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] and s["modes"]["b"]["workloads"]["fixed"]["count"] == 6  # 3 per repetition


@pytest.mark.parametrize(("variant", "observed", "flag"), [("patched-direct", "direct", None),
                                                           ("patched-mmio", "mmio", "FELL BACK")])
def test_results_record_each_heads_path_as_qemu_reports_it(tmp_path: Path, variant: str, observed: str,
                                                            flag: str | None) -> None:
    world = World(qemu_variant=variant)
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path)), "--out", str(out)], ops=make_ops(world)) == 0
    meta = json.loads((out / "meta.json").read_text())
    for key in ("cxl_paths", "cxl_paths_end"):  # read at the start and again at the end of the run
        assert [(h["node"], h["observed"]) for h in meta[key]] == [("node0", observed), ("node1", observed)]
    notes = meta["emulation"]["distortions"]
    report = (out / "report.md").read_text()
    assert "## What emulation distorts" in report and all(n in report for n in notes)
    assert any(n.startswith(f"{observed} path:") for n in notes)
    assert any(n.startswith("TCG:") for n in notes)
    assert any(n.startswith("FELL BACK: node0/mhd0, node1/mhd0") for n in notes) == (flag is not None)
