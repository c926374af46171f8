"""The `restore` and `sandbox` workload kinds: strict specs with file:line:field errors, invocations
against a fake agent and fake nodes (no VMs), results flowing into summary, report and plots, and
every shipped scenario validating."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed.access.agent import AgentError, Exchange
from testbed.access.node import ChannelNode
from testbed.scenario.kinds import KINDS
from testbed.scenario.kinds import restore as restore_kinds
from testbed.scenario.kinds.restore import RestoreAction, RestoreKind, RestoreSpec
from testbed.scenario.kinds.sandbox import SandboxKind, SandboxSpec
from testbed.scenario.output import plots
from testbed.scenario.spec import arrivals, schema
from testbed.ui import cli

from .test_scenario_executor import World, make_ops
from .test_scenario_schema import error, write

REPO = Path(__file__).resolve().parents[2]
TWO = REPO / "testbeds" / "two-node.yaml"
SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))


# --- a fake guest agent with the snap.* and store.* ops ------------------------------------------

class SnapAgent:
    """Keeps a store per MHD shared by every node (as the CXL device is) and records the calls."""

    store: dict[str, dict[str, Any]]

    def __init__(self, node: str, calls: list[tuple[str, str, dict[str, Any]]], store: dict[str, dict[str, Any]],
                 lock: threading.Lock) -> None:
        self.node, self.calls, self.store, self.lock = node, calls, store, lock

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        return Exchange(self.request(op, **dict(args or {})), 0.5)

    def request(self, op: str, **args: Any) -> Any:
        with self.lock:
            self.calls.append((self.node, op, args))
        if op == "ping":
            return {"agent": "fake", "protocol": 1}
        if op == "store.format":
            self.store.clear()
            return {"heads": 2}
        if op == "store.list":
            return [{"name": n, "head": 0, "seq": r["seq"], "bytes": 4096, "meta": {"function": r["function"]}}
                    for n, r in self.store.items()]
        if op == "store.delete":
            self.store.pop(args["name"])
            return {"deleted": args["name"]}
        if op == "snap.take":
            if args["name"] in self.store:
                raise AgentError(self.node, op, "StoreError", f"a template named {args['name']!r} already exists")
            seq = len(self.calls)
            self.store[args["name"]] = {"function": args["function"], "seq": seq, "env": args.get("env")}
            return {"name": args["name"], "head": 0, "seq": seq, "function": args["function"], "areas": 3,
                    "template_bytes": 8 << 20, "criu_bytes": 1 << 20,
                    "timings": {"warm_s": 0.5, "dump_s": 1.25, "publish_s": 0.25}, "warm_result": {}}
        if args.get("name") not in self.store:
            raise AgentError(self.node, op, "StoreError", f"no template named {args.get('name')!r}")
        if op == "snap.prepare":
            return {"name": args["name"], "full": args.get("full", False)}
        if op == "snap.run":
            return self.run(**args)
        if op == "snap.dedup":
            n, mode = int(args["count"]), args["mode"]
            per = 100 if mode == "criu" else 10  # a template instance holds only its written pages
            hashes = [f"{self.node if i < 5 else 'same'}-{i}" for i in range(per)] * n
            return {"snapshot": args["name"], "mode": mode, "instances": n, "local_pages": len(hashes),
                    "unique_local": len(set(hashes)), "cxl_pages": 0 if mode == "criu" else 90,
                    "pages": len(hashes) + (0 if mode == "criu" else 90), "hashes": sorted(hashes)}
        raise AgentError(self.node, op, "unknown-op", f"unknown op {op!r}")

    def run(self, name: str, mode: str, count: int = 1, mhd: str = "mhd0", **kw: Any) -> list[dict[str, Any]]:
        if mode == "lazy" and kw.get("sandbox"):
            raise AgentError(self.node, "snap.run", "ValueError", "restores into sandboxes are criu or template")
        per_kib = 10240 if mode in ("cold", "criu", "lazy") else 1024
        out: list[dict[str, Any]] = []
        for i in range(count):
            rec: dict[str, Any] = {
                "snapshot": name, "function": self.store[name]["function"], "mode": mode, "instance": i, "ok": True,
                "result": {"x": 1}, "error": None, "startup_ms": 100.0 + i, "first_request_ms": 5.0, "e2e_ms": 105.0 + i,
                "request_ms": [5.0], "run_ms": 1.0, "faults": {"minflt": 10, "majflt": 0},
                "memory": {"rss_local_kib": per_kib, "pss_local_kib": per_kib, "rss_cxl_kib": 9216 if mode == "template"
                           else 0, "cow_pages": 3 if mode == "template" else 0}}
            if mode == "cold":
                rec["init_ms"] = 60.0
            else:
                rec["restore_ms"] = 70.0
            if kw.get("sandbox"):
                rec["sandbox"] = kw["sandbox"]
                if kw["sandbox"] == "fresh":
                    rec["sandbox_create_ms"] = 20.0
            out.append(rec)
        summary = {"summary": True, "snapshot": name, "mode": mode, "instances": count,
                   "node_used_delta_kib": per_kib * count + 100, "local_kib_per_instance": per_kib + 100 / count,
                   "rss_local_kib": per_kib * count, "pss_local_kib": per_kib * count,
                   "rss_cxl_kib": (9216 if mode == "template" else 0) * count, "cow_pages": 0}
        if mode == "template":
            summary["template"] = {"nr_vmas": 4, "shared_maps": count, "cow_copies": 3 * count}
        return [*out, summary]


class Agents:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.store: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def agent(self, node: str) -> SnapAgent:
        return SnapAgent(node, self.calls, self.store, self.lock)

    def ops(self, op: str) -> list[tuple[str, dict[str, Any]]]:
        return [(n, a) for n, o, a in self.calls if o == op]


def values(**kw: Any) -> dict[str, Any]:
    return {"nonce": "n1", "node": "node1", "mode": "m", "workload": "w", "rep": 0, "seq": 0, "function": "w", **kw}


# --- spec parsing ------------------------------------------------------------------------------

BASE = f"""\
name: t
testbed: {TWO}
modes:
  criu: {{params: {{restore: criu}}}}
  template: {{params: {{restore: template}}}}
workloads:
  - name: w
    kind: restore
    snapshot: snap-hello
    function: hello
    env: {{HEAP_MIB: 32}}
    mode: "${{restore}}"
    count: 2
    arrival: {{pattern: fixed, count: 1}}
"""


def test_restore_spec_parses(tmp_path: Path) -> None:
    scn = schema.load(write(tmp_path, BASE))
    spec = scn.workloads[0].spec
    assert isinstance(spec, RestoreSpec)
    assert spec.action is RestoreAction.RUN and spec.snapshot == "snap-hello" and spec.count == 2
    assert spec.env == {"HEAP_MIB": "32"}  # numbers become the strings an environment holds
    assert KINDS["restore"].has_prepare(spec)  # it names its function: it takes the snapshot


@pytest.mark.parametrize(("change", "where", "message"), [
    (("mode: \"${restore}\"", "mode: critu"), (12, "workloads[0].mode"), "mode 'critu' is not one of cold, criu, lazy, template"),
    (("snapshot: snap-hello", "snapshot: snap/hello"), (9, "workloads[0].snapshot"), "1-40 of [A-Za-z0-9._:-]"),
    (("count: 2", "count: 0"), (13, "workloads[0].count"), "at least 1"),
    (("count: 2", "count: many"), (13, "workloads[0].count"), "count must be an integer"),
    (("    count: 2\n", "    count: 2\n    full: false\n"), (14, "workloads[0].full"), "not used by action run"),
    (("    mode: \"${restore}\"\n", ""), (7, "workloads[0]"), "action run needs 'mode'"),
    (("    function: hello\n", "    function: helo\n"), (10, "workloads[0].function"), "unknown function 'helo'"),
    (("    function: hello\n", ""), (10, "workloads[0].env"), "give `function` too"),
    (("    count: 2\n", "    count: 2\n    action: restart\n"), (14, "workloads[0].action"), "expected one of run, dedup"),
    (("    count: 2\n", "    count: 2\n    sandbox: pool\n"), (14, "workloads[0].sandbox"), "criu or template, not lazy"),
    (("    count: 2\n", "    count: 2\n    sandbox: shared\n"), (14, "workloads[0].sandbox"), "not one of pool, fresh, none"),
    (("    count: 2\n", "    count: 2\n    aliases: {fn00: bad/name}\n"), (14, "workloads[0].aliases.fn00"), "snapshot name"),
    (("    count: 2\n", "    count: 2\n    event: [1, 2]\n"), (14, "workloads[0].event"), "expected a mapping"),
    (("env: {HEAP_MIB: 32}", "env: {HEAP-MIB: 32}"), (11, "workloads[0].env.HEAP-MIB"), "not an environment variable name"),
    (("count: 2", "count: 2\n    requests: 0"), (14, "workloads[0].requests"), "at least 1"),
])
def test_restore_spec_errors_name_file_line_and_field(tmp_path: Path, change: tuple[str, str], where: tuple[int, str],
                                                      message: str) -> None:
    text = BASE.replace(*change)
    if "sandbox: pool" in text:
        text = text.replace('mode: "${restore}"', "mode: lazy")
    exc = error(tmp_path, text)
    assert (exc.line, exc.field) == where, str(exc)
    assert message in exc.message, str(exc)
    assert str(exc).startswith(f"{tmp_path / 's.yaml'}:{where[0]}: {where[1]}: ")


def test_values_of_parameters_are_checked_per_mode(tmp_path: Path) -> None:
    exc = error(tmp_path, BASE, ["modes.template.params.restore=templat"])
    assert (exc.line, exc.field) == (12, "workloads[0].mode")
    assert "mode 'templat' is not one of" in exc.message and "in mode template" in exc.message
    text = BASE.replace("    count: 2\n", '    count: "${n}"\n    sandbox: "${sb}"\n').replace(
        "restore: criu}", "restore: criu, n: 2, sb: pool}").replace("restore: template}", "restore: template, n: 0, sb: none}")
    exc = error(tmp_path, text)
    assert exc.field == "workloads[0].count" and "at least 1, got 0 (from ${n}) in mode template" in exc.message
    exc = error(tmp_path, text, ["modes.criu.params.restore=lazy", "modes.template.params.n=1"])
    assert exc.field == "workloads[0].sandbox" and "criu or template, not lazy" in exc.message


def test_take_and_prepare_steps(tmp_path: Path) -> None:
    text = BASE.replace("modes:", """\
setup:
  - {name: take, kind: restore, nodes: node0, action: take, snapshot: s1, function: jsonrt, warm: {items: 5}}
  - {name: prep, kind: restore, action: prepare, snapshot: s1, full: false}
modes:""")
    scn = schema.load(write(tmp_path, text))
    take, prep = scn.setup
    assert isinstance(take.spec, RestoreSpec)
    assert take.spec.action is RestoreAction.TAKE and take.on == ("node0",) and prep.on == ("node0", "node1")
    exc = error(tmp_path, text.replace("function: jsonrt, ", ""))
    assert (exc.line, exc.field) == (4, "setup[0]") and "action take needs 'function'" in exc.message
    exc = error(tmp_path, text.replace("full: false", "full: false, mode: criu"))
    assert exc.field == "setup[1].mode" and "not used by action prepare" in exc.message


SANDBOX = f"""\
name: t
testbed: {TWO}
setup:
  - {{name: pool, kind: sandbox, action: pool, size: 2, on_exhausted: fallback}}
modes:
  repurposed: {{params: {{sandbox: pool}}}}
  fresh: {{params: {{sandbox: fresh}}}}
workloads:
  - name: s
    kind: sandbox
    function: hello
    sandbox: "${{sandbox}}"
    event: {{name: x}}
    arrival: {{pattern: closed, clients: 1, count: 2}}
"""


@pytest.mark.parametrize(("change", "where", "message"), [
    (("size: 2, ", ""), (4, "setup[0]"), "action pool needs 'size'"),
    (("on_exhausted: fallback", "on_exhausted: wait"), (4, "setup[0].on_exhausted"), "expected one of queue, fallback"),
    (("    function: hello\n", ""), (9, "workloads[0]"), "action run needs 'function'"),
    (("    event: {name: x}\n", "    env: {A: b}\n"), (13, "workloads[0].env"), "catalog's env only"),
    (("    event: {name: x}\n", "    size: 3\n"), (13, "workloads[0].size"), "not used by action run"),
    (("sandbox: fresh}", "sandbox: reuse}"), (12, "workloads[0].sandbox"), "sandbox 'reuse' is not one of pool, fresh"),
    (('sandbox: "${sandbox}"', "sandbox: none"), (12, "workloads[0].sandbox"), "expected pool or fresh"),
])
def test_sandbox_spec_errors(tmp_path: Path, change: tuple[str, str], where: tuple[int, str], message: str) -> None:
    exc = error(tmp_path, SANDBOX.replace(*change))
    assert (exc.line, exc.field) == where, str(exc)
    assert message in exc.message, str(exc)


# --- invocations against the fake agent ----------------------------------------------------------

def restore_spec(tmp_path: Path, text: str = BASE, overrides: Sequence[str] = ()) -> Any:
    return schema.load(write(tmp_path, text), list(overrides)).workloads[0].spec


def test_run_flattens_the_records(tmp_path: Path) -> None:
    kind, agents = RestoreKind(), Agents()
    spec = restore_spec(tmp_path)
    agent0, agent1 = agents.agent("node0"), agents.agent("node1")
    prep = kind.prepare(agent0, spec, values(node="node0", restore="criu"), 60)
    assert prep.ok and prep.result is not None and prep.result["template_mib"] == 8.0
    assert prep.result["phases"] == {"warm_ms": 500.0, "dump_ms": 1250.0, "publish_ms": 250.0}
    assert agents.ops("snap.take") == [("node0", {"name": "snap-hello", "function": "hello", "mhd": "mhd0",
                                                  "env": {"HEAP_MIB": "32"}})]
    out = kind.invoke(agent1, spec, values(restore="criu"), 60)
    assert out.ok and out.error is None and out.result is not None
    r = out.result
    assert r["instances"] == 2 and r["startup_ms"] == 100.5 and r["startup_max_ms"] == 101.0 and r["restore_ms"] == 70.0
    assert r["memory_kb"] == 2 * 10240 and r["pss_local_kib_per_instance"] == 10240  # the instances' local PSS
    assert r["node_used_delta_kib"] == 2 * 10240 + 100 and r["local_kib_per_instance"] == 10290  # the node's view
    assert r["phases"] == {"restore_ms": 70.0, "ready_ms": 30.5, "first_request_ms": 5.0}
    assert len(r["records"]) == 2 and r["summary"]["instances"] == 2
    assert r["agent_ms"] == 0.5  # the agent's own time for snap.run, from the reply's timing
    assert out.function_ms is None  # two instances: no single time on the node
    # Prepared on node1 first (full image set for criu), outside the measured request; once.
    assert agents.ops("snap.prepare") == [("node1", {"name": "snap-hello", "mhd": "mhd0", "full": True})]
    run = agents.ops("snap.run")
    assert run == [("node1", {"name": "snap-hello", "mode": "criu", "count": 2, "mhd": "mhd0"})]
    kind.invoke(agent1, spec, values(restore="criu", seq=1), 60)
    assert len(agents.ops("snap.prepare")) == 1 and len(agents.ops("snap.run")) == 2
    # Cold: spawn + init; one instance: the node's e2e time is the function time.
    one = restore_spec(tmp_path, BASE.replace("count: 2", "count: 1"))
    cold = kind.invoke(agent1, one, values(restore="cold"), 60)
    assert cold.result is not None and cold.result["phases"] == {"spawn_ms": 40.0, "init_ms": 60.0, "first_request_ms": 5.0}
    assert cold.function_ms == 105.0 and cold.result["init_ms"] == 60.0


def test_prepare_takes_once_per_run_and_replaces_older_snapshots(tmp_path: Path) -> None:
    kind, agents = RestoreKind(), Agents()
    spec = restore_spec(tmp_path)
    agent0 = agents.agent("node0")
    agents.store["snap-hello"] = {"function": "hello", "seq": 1}  # left by an earlier run
    first = kind.prepare(agent0, spec, values(node="node0"), 60)
    assert first.ok and first.result is not None and first.result["replaced"] is True
    assert [a["name"] for _, a in agents.ops("store.delete")] == ["snap-hello"]
    again = kind.prepare(agent0, spec, values(node="node0"), 60)
    assert again.ok and again.result is not None and again.result["reused"] is True
    assert len(agents.ops("snap.take")) == 1
    # Another run (another nonce), or other env: taken again.
    kind.prepare(agent0, spec, values(node="node0", nonce="n2"), 60)
    assert len(agents.ops("snap.take")) == 2
    # A set-up step's take always replaces.
    take = restore_spec(tmp_path, BASE.replace("count: 2", "action: take").replace('    mode: "${restore}"\n', ""))
    assert kind.invoke(agent0, take, values(node="node0", nonce="n2"), 60).ok
    assert len(agents.ops("snap.take")) == 3


def test_a_retaken_snapshot_is_prepared_again(tmp_path: Path) -> None:
    kind, agents = RestoreKind(), Agents()
    spec = restore_spec(tmp_path)
    agent0, agent1 = agents.agent("node0"), agents.agent("node1")
    kind.prepare(agent0, spec, values(node="node0"), 60)
    kind.invoke(agent1, spec, values(restore="template"), 60)
    kind.invoke(agent0, spec, values(node="node0", restore="criu"), 60)  # node0 took it: prepared with every page
    assert agents.ops("snap.prepare") == [("node1", {"name": "snap-hello", "mhd": "mhd0", "full": False})]
    take = restore_spec(tmp_path, BASE.replace("count: 2", "action: take").replace('    mode: "${restore}"\n', ""))
    kind.invoke(agent0, take, values(node="node0"), 60)
    kind.invoke(agent1, spec, values(restore="template"), 60)
    assert len(agents.ops("snap.prepare")) == 2


def test_agent_errors_are_failed_invocations_not_failures(tmp_path: Path) -> None:
    kind, agents = RestoreKind(), Agents()
    spec = restore_spec(tmp_path)
    out = kind.invoke(agents.agent("node1"), spec, values(restore="criu"), 60)
    assert not out.ok and out.error is not None and "preparing snap-hello on node1" in out.error
    assert "no template named 'snap-hello'" in out.error
    kind.prepare(agents.agent("node0"), spec, values(node="node0"), 60)
    sb = restore_spec(tmp_path, BASE.replace("count: 2", 'sandbox: "${function}"'))  # a built-in: no check sees it
    bad = kind.invoke(agents.agent("node1"), sb, values(restore="criu", function="shared"), 60)
    assert not bad.ok and bad.error is not None and "sandbox 'shared' is not one of" in bad.error


def test_sandboxed_runs_pass_the_sandbox(tmp_path: Path) -> None:
    kind, agents = RestoreKind(), Agents()
    text = BASE.replace("count: 2", 'count: 1\n    sandbox: "${sb}"').replace(
        "restore: criu}", "restore: criu, sb: fresh}").replace("restore: template}", "restore: template, sb: none}")
    spec = restore_spec(tmp_path, text)
    kind.prepare(agents.agent("node0"), spec, values(node="node0"), 60)
    fresh = kind.invoke(agents.agent("node1"), spec, values(restore="criu", sb="fresh"), 60)
    assert fresh.ok and fresh.result is not None and fresh.result["sandbox"] == "fresh"
    assert fresh.result["phases"] == {"sandbox_create_ms": 20.0, "restore_ms": 70.0, "ready_ms": 10.0, "first_request_ms": 5.0}
    kind.invoke(agents.agent("node1"), spec, values(restore="template", sb="none"), 60)
    runs = [a for _, a in agents.ops("snap.run")]
    assert runs[0]["sandbox"] == "fresh" and "sandbox" not in runs[1]


def test_dedup_combines_the_nodes_of_a_unit(tmp_path: Path) -> None:
    kind, agents = RestoreKind(), Agents()
    spec = restore_spec(tmp_path, BASE.replace("count: 2", "count: 2\n    action: dedup"))
    kind.prepare(agents.agent("node0"), spec, values(node="node0"), 60)
    a = kind.invoke(agents.agent("node0"), spec, values(node="node0", restore="criu"), 60)
    assert a.ok and a.result is not None and "hashes" not in a.result and a.result["hashes_count"] == 200
    assert a.result["local_pages"] == 200 and a.result["local_unique"] == 100 and a.result["local_duplicates"] == 100
    assert a.result["memory_kb"] == 800 and "cross_nodes" not in a.result
    b = kind.invoke(agents.agent("node1"), spec, values(node="node1", restore="criu", seq=1), 60)
    assert b.result is not None
    # 95 contents are on both nodes (5 per node are the node's own): 400 pages, 105 distinct.
    assert b.result["cross_local_pages"] == 400 and b.result["cross_local_unique"] == 105
    assert b.result["cross_local_duplicates"] == 295 and b.result["cross_node_duplicates"] == 95
    other = kind.invoke(agents.agent("node1"), spec, values(node="node1", restore="criu", rep=1), 60)
    assert other.result is not None and "cross_nodes" not in other.result  # another unit starts afresh
    assert [a["count"] for _, a in agents.ops("snap.dedup")] == [2, 2, 2]


def test_run_result_of_failed_and_odd_replies() -> None:
    ok, error, res, _ = restore_kinds.run_result([{"ok": False, "instance": 0, "error": "criu restore failed"}], 1)
    assert not ok and error == "instance 0: criu restore failed"
    ok, error, _, _ = restore_kinds.run_result([{"ok": True, "instance": 0, "startup_ms": 1.0}], 2)
    assert not ok and error == "1 instance records, expected 2"
    ok, error, res, _ = restore_kinds.run_result({"oops": 1}, 1)
    assert not ok and error is not None and res == {"value": {"oops": 1}}


# --- the sandbox kind against a fake node ------------------------------------------------------

class SandboxAgent:
    """The sandbox.* ops of an agent session, answering with the records the pool daemon and
    the crun baseline give (JSON, as on the wire)."""

    name = "node1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.active = 0
        self.overlap = False
        self.lock = threading.Lock()

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        with self.lock:
            self.calls.append((op, dict(args or {})))
            self.active += 1
            self.overlap |= self.active > 1
        t0 = time.monotonic_ns()
        time.sleep(0.01)
        with self.lock:
            self.active -= 1
        fn = {"ok": True, "result": {"greeting": "hi"}, "run_s": 0.002}
        out: dict[str, Any]
        if op == "sandbox.run":
            out = {"ok": True, "lease": "L1", "fresh": False, "waited_s": 0.001, "reply": {**fn, "invoke_s": 0.004},
                   "timings": {"cgroup": 0.001, "rootfs": 0.003, "process": 0.006, "ready_sandbox": 0.01,
                               "function_init": 0.02, "ready_function": 0.03, "started_at": 12345.0},
                   "release": {"clean": True, "timings": {"kill": 0.001, "mounts": 0.002}}}
        elif op == "sandbox.fresh":
            out = {"ok": True, "reply": fn, "destroy_s": 0.05,
                   "timings": {"rootfs_outer": 0.01, "bundle": 0.001, "create": 0.1, "network": 0.02, "process": 0.03,
                               "ready_sandbox": 0.161, "function_init": 0.02, "ready_function": 0.181}}
        else:
            out = {"size": 2, "idle": []}
        return Exchange(out, (time.monotonic_ns() - t0) / 1e6)


def test_sandbox_kind_runs_pool_and_fresh(tmp_path: Path) -> None:
    scn = schema.load(write(tmp_path, SANDBOX))
    kind, agent = SandboxKind(), SandboxAgent()
    spec = scn.workloads[0].spec
    assert isinstance(spec, SandboxSpec)
    pool = kind.invoke(agent, spec, values(sandbox="pool"), 60)
    assert pool.ok and pool.result is not None and pool.function_ms is not None
    assert agent.calls[-1] == ("sandbox.run", {"function": "hello", "event": {"name": "x"}})
    assert pool.result["phases"] == pytest.approx({"pick_ms": 1.0, "cgroup_ms": 1.0, "rootfs_ms": 3.0, "process_ms": 6.0,
                                                   "function_init_ms": 20.0, "run_ms": 2.0})
    assert pool.result["sandbox_ms"] == pytest.approx(11.0) and pool.result["startup_ms"] == pytest.approx(31.0)
    assert pool.result["teardown_ms"] == pytest.approx(3.0) and pool.result["first_request_ms"] == pytest.approx(4.0)
    assert pool.result["agent_ms"] == pool.function_ms and pool.function_ms >= 10.0  # the agent's time for the op
    fresh = kind.invoke(agent, spec, values(sandbox="fresh"), 60)
    assert agent.calls[-1] == ("sandbox.fresh", {"function": "hello", "event": {"name": "x"}})
    assert fresh.ok and fresh.result is not None and fresh.result["sandbox_ms"] == pytest.approx(161.0)
    assert list(fresh.result["phases"]) == ["rootfs_ms", "bundle_ms", "create_ms", "network_ms", "process_ms",
                                            "function_init_ms", "run_ms"]
    assert fresh.result["teardown_ms"] == pytest.approx(50.0)
    assert isinstance(scn.setup[0].spec, SandboxSpec)
    step = kind.invoke(agent, scn.setup[0].spec, values(), 60)
    assert step.ok and agent.calls[-1] == ("sandbox.pool", {"size": 2, "on_exhausted": "fallback"})


def test_sandbox_kind_reports_a_malformed_record_as_a_failed_invocation(tmp_path: Path) -> None:
    spec = schema.load(write(tmp_path, SANDBOX)).workloads[0].spec
    assert isinstance(spec, SandboxSpec)

    class Garbled(SandboxAgent):
        def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
            return Exchange({"ok": True, "reply": {"ok": "yes"}}, 1.0)

    out = SandboxKind().invoke(Garbled(), spec, values(sandbox="pool"), 60)
    assert not out.ok and out.error is not None and "reply.ok: expected a boolean" in out.error


def test_fresh_sandboxes_on_a_node_do_not_overlap(tmp_path: Path) -> None:
    spec = schema.load(write(tmp_path, SANDBOX)).workloads[0].spec
    kind, agent = SandboxKind(), SandboxAgent()
    threads = [threading.Thread(target=kind.invoke, args=(agent, spec, values(sandbox="fresh"), 60)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(agent.calls) == 4 and not agent.overlap


# --- end to end through `testbed run` (fake nodes and agents) -----------------------------------

RUN = f"""\
name: density
testbed: {TWO}
placement: {{create_on: node0, invoke_on: [node0, node1]}}
timeout: 5s
setup:
  - {{name: format, kind: agent, nodes: node0, op: store.format, args: {{mhd: mhd0}}}}
modes:
  cold: {{params: {{restore: cold}}}}
  criu: {{params: {{restore: criu}}}}
  template: {{params: {{restore: template}}}}
workloads:
  - name: density
    kind: restore
    snapshot: md-hello
    function: hello
    mode: "${{restore}}"
    count: "${{instances}}"
    arrival: {{pattern: fixed, count: 2, interval: 0.01s}}
    sweep: {{instances: [1, 4]}}
metrics: [latency_ms, startup_ms, memory_kb, local_kib_per_instance]
assertions:
  - "error_rate == 0"
  - 'ratio(median(local_kib_per_instance), template, criu) < 0.5 for workload "density[instances=4]"'
"""


def test_restore_results_reach_summary_report_and_plots(tmp_path: Path) -> None:
    world, agents = World(), Agents()
    ops = make_ops(world)

    @contextlib.contextmanager
    def agent(node: ChannelNode, timeout: float) -> Iterator[SnapAgent]:
        yield agents.agent(node.name)

    ops.agent = agent
    out = tmp_path / "out"
    assert cli.main(["run", str(write(tmp_path, RUN)), "--out", str(out)], ops=ops) == 0
    assert len(agents.ops("snap.take")) == 1  # once per run, on create_on
    assert {n for n, _ in agents.ops("snap.take")} == {"node0"}
    assert len(agents.ops("snap.run")) == 3 * 2 * 2
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"], s["assertions"]
    w = s["modes"]["template"]["workloads"]["density[instances=4]"]
    assert w["metrics"]["local_kib_per_instance"]["median"] == 1049 and w["metrics"]["startup_ms"]["count"] == 2
    for f in ("latency_cdf.png", "e2e_cdf.png", "memory_instances.png", "startup_breakdown.png"):
        assert (out / f).exists(), f
    report = (out / "report.md").read_text()
    assert "| template | 2 | 0 | local_kib_per_instance |" in report
    raw = [json.loads(ln) for ln in (out / "raw.jsonl").read_text().splitlines()]
    prep = [r for r in raw if r["type"] == "prepare"]
    assert len(prep) == 6 and sum(1 for r in prep if r["result"]["reused"]) == 5
    inv = [r for r in raw if r["type"] == "invocation" and r["mode"] == "criu"]
    one = [r for r in inv if r["workload"] == "density[instances=1]"]
    assert one[0]["phases"] == {"restore_ms": 70.0, "ready_ms": 30.0, "first_request_ms": 5.0}
    assert one[0]["metrics"]["function_ms"] == 105.0  # one instance: its e2e time on the node
    assert all(r["metrics"]["instances"] == r["params"]["instances"] for r in inv)
    assert {r["node"] for r in inv if r["workload"] == "density[instances=4]"} == {"node0", "node1"}


def test_phase_order_merges_every_records_order() -> None:
    assert plots.merge_order([["spawn_ms", "init_ms", "first_request_ms"],
                              ["restore_ms", "ready_ms", "first_request_ms"],
                              ["sandbox_create_ms", "restore_ms", "ready_ms", "first_request_ms"]]) == [
        "spawn_ms", "init_ms", "sandbox_create_ms", "restore_ms", "ready_ms", "first_request_ms"]


# --- the shipped scenarios ---------------------------------------------------------------------

@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_validates(path: Path) -> None:
    scn = schema.load(path)
    # the default testbed; placement's adds a modelled SSD (a cold disk read must cost a disk's time)
    own = {"serverlessllm-placement": "two-node-ssd", "mooncake": "three-node"}  # the rest run on the default
    assert scn.topology.name == own.get(path.stem, "two-node")
    assert scn.workloads
    head = path.read_text().splitlines()[0]
    assert head.startswith("# "), "a scenario starts with a comment saying what it measures"
    assert "minute" in path.read_text().split("\nname:")[0], "and how long it takes"


def test_shipped_scenarios_spread_over_both_nodes_where_they_say_so() -> None:
    """A fixed arrival without an interval is one client on the first node: the scenarios that
    compare both nodes must use clients or an open loop."""
    for name in ("memory-density", "dedup"):
        scn = schema.load(REPO / "scenarios" / f"{name}.yaml")
        for w in scn.workloads:
            sched = w.arrival.schedule(None, w.base)
            p = scn.placement_of(scn.modes[0], w)
            assert p.invoke_on == ("node0", "node1")
            assert isinstance(sched, arrivals.OpenLoop) and len(sched.events) == 2, name  # event i on node i % 2


def test_shipped_scenarios_use_the_new_kinds() -> None:
    kinds = {p.stem: {w.kind for w in schema.load(p).workloads} for p in SCENARIOS}
    assert kinds["coldstart"] == kinds["memory-density"] == kinds["dedup"] == kinds["trace-replay"] == {"restore"}
    assert kinds["sandbox-reuse"] == {"sandbox"}
    cold = schema.load(REPO / "scenarios" / "coldstart.yaml")
    assert {m.params["restore"] for m in cold.modes} == {"cold", "criu", "lazy", "template"}
    p = cold.placement_of(cold.modes[0], cold.workloads[0])
    assert (p.create_on, p.invoke_on) == ("node0", ("node1",))
    trace = schema.load(REPO / "scenarios" / "trace-replay.yaml")
    fns = {f for _, f in trace.workloads[0].arrival.trace}
    trace_spec = trace.workloads[0].spec
    assert isinstance(trace_spec, RestoreSpec)
    assert fns <= set(trace_spec.aliases)  # every function of the trace has a snapshot


@pytest.mark.parametrize(("path", "override", "field"), [
    ("coldstart", "modes.lazy.params.restore=lazzy", "workloads[0].mode"),
    ("memory-density", "workloads.density.count=0", "workloads[0].count"),
    ("sandbox-reuse", "workloads.start.sandbox=shared", "workloads[0].sandbox"),
    ("trace-replay", "workloads.bursty.aliases.fn00=no/such", "workloads[0].aliases.fn00"),
    ("dedup", "workloads.heap.action=undo", "workloads[1].action"),
])
def test_bad_input_is_one_line_and_exit_2(path: str, override: str, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    f = REPO / "scenarios" / f"{path}.yaml"
    assert cli.main(["run", str(f), "--set", override, "--out", "/nonexistent/never"], ops=make_ops(World())) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"testbed: error: {f}:") and f": {field}: " in err, err
    assert "(value from --set)" in err or "in mode" in err


def test_a_functions_digest_is_lifted_and_instances_compared() -> None:
    same = [{"ok": True, "instance": i, "startup_ms": 1.0, "result": {"tokens": [3, 4], "digest": 1234}} for i in range(2)]
    ok, error, res, _ = restore_kinds.run_result(same, 2)
    assert ok and error is None and res["answer_digest"] == 1234 and res["answers_agree"] == 1
    differ = [dict(same[0]), {**same[1], "result": {"tokens": [3, 5], "digest": 99}}]
    _, _, res, _ = restore_kinds.run_result(differ, 2)
    assert res["answer_digest"] == 1234 and res["answers_agree"] == 0
    plain = [{"ok": True, "instance": 0, "startup_ms": 1.0, "result": {"greeting": "hello"}}]
    _, _, res, _ = restore_kinds.run_result(plain, 1)
    assert "answer_digest" not in res and "answers_agree" not in res  # no digest: nothing to compare
