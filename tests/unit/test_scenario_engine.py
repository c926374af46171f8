"""The executor's pieces on their own: the testbed seam (a fake TestbedHandle, one shared agent
per node), the scheduler, the memory sampler, the metrics of an outcome."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed.access.agent import Exchange
from testbed.access.node import Result
from testbed.config.topology import HostFacts, Topology
from testbed.lifecycle import state as st
from testbed.scenario.kinds.base import Agent, Failure, Outcome
from testbed.scenario.run import sampler, scheduler, seam
from testbed.scenario.run.executor import Options, metrics_of, run
from testbed.scenario.run.seam import Backend, PhaseReporter
from testbed.scenario.spec import arrivals, schema

from .fakenodes import NoFiles
from .test_scenario_executor import World, scenario


class SharedAgent:
    """One agent per node, shared by every thread; counts requests and the most at once."""

    def __init__(self, node: str) -> None:
        self.node, self.lock = node, threading.Lock()
        self.requests = self.inflight = self.most = 0

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        with self.lock:
            self.requests += 1
            self.inflight += 1
            self.most = max(self.most, self.inflight)
        time.sleep(0.002)
        with self.lock:
            self.inflight -= 1
        return Exchange({"op": op, "args": dict(args or {}), "node": self.node}, 1.25)


class FakeTestbed:
    def __init__(self, world: World, topology: Topology, created: bool) -> None:
        self.world, self.topology, self.created = world, topology, created
        self.name = topology.name
        self.state = st.State(topology.name, topology.source, topology.text, "h", st.Phase.UP, accel="tcg")
        self.state.nodes = {n.name: st.NodeState(n.name, f"d-{n.name}", 4000 + i, n.address, ["mhd0"])
                            for i, n in enumerate(topology.nodes)}
        self.agents = {n: SharedAgent(n) for n in self.state.nodes}
        self.nodes_asked: list[str] = []

    def node(self, name: str) -> Any:
        from .test_scenario_executor import FakeNode

        self.nodes_asked.append(name)
        return FakeNode(self.world, name)

    def agent(self, name: str) -> Agent:
        return self.agents[name]

    def keep(self) -> None:
        raise AssertionError("only --keep-on-failure keeps, and these runs do not fail")


def seam_backend(world: World, opened: list[FakeTestbed], events: list[str], created: bool = True) -> Backend:
    @contextlib.contextmanager
    def open_testbed(topology: Topology, keep: bool, progress: PhaseReporter) -> Iterator[seam.TestbedHandle]:
        progress("boot", "fake")
        tb = FakeTestbed(world, topology, created)
        opened.append(tb)
        events.append(f"up keep={keep}")
        try:
            yield tb
        finally:
            events.append("exit")

    @contextlib.contextmanager
    def progress(title: str, total_nodes: int) -> Iterator[PhaseReporter]:
        events.append(f"progress {title} {total_nodes}")
        yield lambda phase, message: events.append(f"{phase}: {message}")

    return Backend(open_testbed=open_testbed, host_facts=lambda: HostFacts(64 << 30, 8), progress=progress,
                   host_meta=lambda: {"host": {"cpu": "fake"}}, cxl_paths=lambda state: [])


def test_a_run_on_the_seam_shares_one_agent_per_node(tmp_path: Path) -> None:
    world, opened, events = World(), list[FakeTestbed](), list[str]()
    scn = schema.load(scenario(tmp_path), [])
    out = run(scn, Options(tmp_path / "out"), seam_backend(world, opened, events))
    assert out.ok and out.summary["units"] == {"done": 12, "total": 12}
    assert events[:3] == ["progress two-node 2", "boot: fake", "up keep=False"] and events[-1] == "exit"
    tb = opened[0]
    assert sorted(set(tb.nodes_asked)) == ["node0", "node1"]
    # The ping workload: 2 closed-loop clients on one node share the testbed's agent.
    assert tb.agents["node0"].requests > 0 and tb.agents["node0"].most == 2
    recs = [json.loads(ln) for ln in (out.out / "raw.jsonl").read_text().splitlines()]
    ping = [r for r in recs if r["type"] == "invocation" and r["workload"] == "ping"]
    assert ping and all(r["metrics"]["guest_ms"] == 1.25 for r in ping)
    assert all(r["metrics"]["transport_ms"] == pytest.approx(r["metrics"]["latency_ms"] - 1.25) for r in ping)
    meta = json.loads((out.out / "meta.json").read_text())
    assert meta["testbed"]["brought_up_by_run"] and not meta["testbed"]["kept"]
    assert "down_s" in meta["timings"]


def test_a_testbed_found_up_is_not_timed_as_torn_down(tmp_path: Path) -> None:
    world, opened, events = World(), list[FakeTestbed](), list[str]()
    scn = schema.load(scenario(tmp_path), [])
    out = run(scn, Options(tmp_path / "out"), seam_backend(world, opened, events, created=False))
    meta = json.loads((out.out / "meta.json").read_text())
    assert meta["testbed"]["kept"] and "down_s" not in meta["timings"]


def test_metrics_prefer_the_guests_own_time_for_transport() -> None:
    m = metrics_of(Outcome(True, 10.0, function_ms=4.0, result={"x": 2, "ok": True}), None, 0.0)
    assert m == {"latency_ms": 10.0, "function_ms": 4.0, "transport_ms": 6.0, "x": 2}
    m = metrics_of(Outcome(True, 10.0, guest_ms=7.5), 1.0, 1.002)
    assert m["latency_ms"] == 10.0 and m["guest_ms"] == 7.5 and m["transport_ms"] == 2.5
    assert m["lateness_ms"] == pytest.approx(2.0)


def test_meminfo_parses_values_and_skips_garbage() -> None:
    text = "MemTotal:  1000 kB\nMemAvailable: 800 kB\nHugePages_Total:    4\nJunk: x kB\nNoColon\n"
    assert sampler.meminfo(text) == {"MemTotal": 1000, "MemAvailable": 800, "HugePages_Total": 4}


class MemNode(NoFiles):
    name = "node0"

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            stream: bool = False) -> Result:
        return Result(self.name, tuple(argv), 0, self.stdout, "", 0.0)


def test_memory_read_and_unreadable() -> None:
    m = sampler.read(MemNode("MemTotal: 1000 kB\nMemAvailable: 750 kB\n"))
    assert (m.total_kb, m.available_kb, m.used_kb) == (1000, 750, 250)
    with pytest.raises(Failure, match="unreadable"):
        sampler.read(MemNode("MemTotal: 1000 kB\n"))


def test_sampler_samples_until_done_and_reports_a_failure() -> None:
    n = [0]

    def sample() -> None:
        n[0] += 1
        if n[0] == 3:
            raise Failure("node0: gone")

    failures: list[Failure] = []
    with sampler.Sampler(0.01, sample, threading.Event(), failures.append):
        time.sleep(0.2)
    assert n[0] == 3 and [str(f) for f in failures] == ["node0: gone"]  # it stopped at the failure
    with sampler.Sampler(0, sample, threading.Event(), failures.append) as s:
        assert s.thread is None  # interval 0: no sampling


def test_open_loop_fires_on_time_round_robin() -> None:
    events = [arrivals.Event(0.0, "f"), arrivals.Event(0.05, "g"), arrivals.Event(0.05, "h")]
    calls: list[tuple[str, int, int, str, float | None]] = []
    lock = threading.Lock()
    starts: list[float] = []

    def call(node: str, seq: int, client: int, function: str, scheduled: float | None) -> None:
        with lock:
            calls.append((node, seq, client, function, scheduled))

    scheduler.open_loop(events, ("a", "b"), 4, threading.Event(), call, starts.append)
    assert sorted(c[:4] for c in calls) == [("a", 0, -1, "f"), ("a", 2, -1, "h"), ("b", 1, -1, "g")]
    assert sorted(c[4] - starts[0] for c in calls if c[4] is not None) == pytest.approx([0.0, 0.05, 0.05])


def test_closed_loop_stops_at_count_and_on_stop() -> None:
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def call(node: str, seq: int, client: int, function: str, scheduled: float | None) -> None:
        with lock:
            seen.append((node, client))

    scheduler.closed_loop(arrivals.ClosedLoop(3, 10, None, "f"), ("a", "b"), threading.Event(), call, lambda t: None)
    assert len(seen) == 10 and {n for n, c in seen if c == 1} <= {"b"}
    stop = threading.Event()
    stop.set()
    seen.clear()
    scheduler.closed_loop(arrivals.ClosedLoop(2, None, 5.0, "f"), ("a",), stop, call, lambda t: None)
    assert seen == []


def test_a_shared_agent_waits_the_workloads_timeout() -> None:
    from testbed.scenario.run.executor import TimedAgent

    seen: list[float | None] = []

    class Recorder:
        def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
            seen.append(timeout)
            return Exchange({}, None)

    agent = TimedAgent(Recorder(), 7.0)
    agent.exchange("ping")
    agent.exchange("ping", None, 2.0)
    assert seen == [7.0, 2.0]


def test_kinds_get_every_node_and_its_bare_address(tmp_path: Path) -> None:
    from testbed.scenario.kinds import KINDS
    from testbed.scenario.kinds.llm import LlmKind

    world, opened, events = World(), list[FakeTestbed](), list[str]()
    scn = schema.load(scenario(tmp_path), [])
    run(scn, Options(tmp_path / "out"), seam_backend(world, opened, events))
    llm = KINDS["llm"]
    assert isinstance(llm, LlmKind)
    state_addresses = {n: ns.address for n, ns in opened[0].state.nodes.items()}
    assert all("/" in a for a in state_addresses.values())  # the state keeps CIDR notation ...
    assert llm.addresses == {n: a.split("/")[0] for n, a in state_addresses.items()}  # ... a kind the address
    assert set(llm.targets) == {"node0", "node1"}
