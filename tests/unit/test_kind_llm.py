"""The `llm` workload kind: strict specs with file:line:field errors, the requests it sends, and
how a run's reply becomes an invocation's figures."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tbproto import ops as proto
from tbproto.codec import decode_as

from testbed.access.agent import AgentError, Exchange
from testbed.scenario.kinds.llm import LlmKind, LlmSpec, crc_of, run_result
from testbed.scenario.spec import schema

from .test_scenario_schema import error, write

REPO = Path(__file__).resolve().parents[2]
TWO = REPO / "testbeds" / "two-node.yaml"

SCN = f"""\
name: t
testbed: {TWO}
setup:
  - {{name: put, kind: llm, nodes: node0, action: put, model: m1, preset: ci}}
  - {{name: disk, kind: llm, nodes: node1, action: disk, model: m1}}
modes:
  disk: {{params: {{loader: disk}}}}
  map: {{params: {{loader: cxl-map}}}}
workloads:
  - name: load
    kind: llm
    model: m1
    loader: "${{loader}}"
    instances: "${{n}}"
    prompt: "hello"
    max_tokens: 4
    arrival: {{pattern: fixed, count: 1}}
    sweep: {{n: [1, 2]}}
"""


@pytest.mark.parametrize(("change", "where", "message"), [
    (("model: m1, preset: ci}", "model: m1}"), (4, "setup[0]"), "action put needs 'preset'"),
    (("action: disk, model: m1}", "action: disk, model: m1, loader: disk}"), (5, "setup[1].loader"),
     "not used by action disk"),
    (('    max_tokens: 4\n', ''), (10, "workloads[0]"), "action run needs 'max_tokens'"),
    (('    max_tokens: 4\n', '    max_tokens: 0\n'), (10, "workloads[0].max_tokens"), "must be from 1 to 4096"),
    (('loader: "${loader}"', 'loader: mmap'), (13, "workloads[0].loader"), "loader 'mmap' is not one of disk, cxl-copy, cxl-map"),
    (('instances: "${n}"', 'instances: 0'), (14, "workloads[0].instances"), "instances must be an integer from 1 to 64"),
    (("loader: cxl-map}", "loader: cxl-mmap}"), (13, "workloads[0].loader"), "loader 'cxl-mmap' is not one of"),
    (("sweep: {n: [1, 2]}", "sweep: {n: [1, 99]}"), (10, "workloads[0]"), "instances must be an integer from 1 to 64"),
])
def test_spec_errors(tmp_path: Path, change: tuple[str, str], where: tuple[int, str], message: str) -> None:
    exc = error(tmp_path, SCN.replace(*change))
    assert message in exc.message, str(exc)
    assert exc.field.startswith(where[1]), str(exc)


def test_requests_per_action(tmp_path: Path) -> None:
    scn = schema.load(write(tmp_path, SCN))
    kind = LlmKind()
    put, disk = scn.setup[0].spec, scn.setup[1].spec
    assert isinstance(put, LlmSpec) and isinstance(disk, LlmSpec)
    assert kind.request(put, {}) == proto.ModelPut("mhd0", "m1", "ci", None, None)
    assert kind.request(disk, {}) == proto.ModelDisk("mhd0", "m1")
    run = scn.workloads[0].spec
    assert isinstance(run, LlmSpec)
    assert kind.request(run, {"loader": "cxl-map", "n": 2}) == proto.LlmRun("m1", "mhd0", proto.Loader.CXL_MAP,
                                                                             "hello", 4, 2)
    assert kind.request(run, {"loader": "nfs", "n": 2}) == "loader 'nfs' is not one of disk, cxl-copy, cxl-map"


class Agent:
    def __init__(self, reply: Any = None, error: str | None = None) -> None:
        self.reply, self.error = reply, error
        self.sent: list[tuple[str, Mapping[str, Any]]] = []

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        self.sent.append((op, dict(args or {})))
        if self.error:
            raise AgentError("node1", op, "failed", self.error)
        return Exchange(self.reply, 120.0)


def instance(tokens: list[int], load: float, ttft: float, pss: float, ok: bool = True) -> dict[str, Any]:
    return {"ok": ok, "loader": "cxl-map", "load_s": load, "ttft_s": ttft, "tokens_per_s": 10.0,
            "total_s": load + ttft + 0.7, "tokens": tokens, "text": "x", "bytes_copied": 0,
            "bytes_mapped": 13 << 20, "pss_local_kib": pss, "rss_cxl_kib": 12800.0,
            **({} if ok else {"error": "exit 1: boom"})}


def test_a_run_reports_medians_over_its_instances(tmp_path: Path) -> None:
    run = schema.load(write(tmp_path, SCN)).workloads[0].spec
    reply = {"instances": [instance([1, 2, 3], 0.01, 0.5, 900.0), instance([1, 2, 3], 0.03, 0.7, 1100.0),
                           instance([1, 2, 3], 0.02, 0.9, 1000.0)], "wall_s": 1.5}
    out = LlmKind().invoke(Agent(reply), run, {"loader": "cxl-map", "n": 3}, 60)  # type: ignore[arg-type]
    assert out.ok and out.result is not None and out.guest_ms == 120.0
    r = out.result
    assert r["load_ms"] == pytest.approx(20.0) and r["first_token_ms"] == pytest.approx(700.0)
    assert r["ttft_ms"] == pytest.approx(730.0)  # the median of 510, 730, 920: load + first token per instance
    assert r["pss_local_kib_per_instance"] == 1000.0 and r["tokens_agree"] == 1
    assert r["tokens_crc"] == crc_of((1, 2, 3)) != crc_of((1, 2, 4))


def test_instances_that_disagree_or_fail_fail_the_invocation() -> None:
    differ = decode_as(proto.LlmRunReply, {"instances": [instance([1, 2], 0.1, 0.2, 1.0), instance([1, 3], 0.1, 0.2, 1.0)],
                                           "wall_s": 1.0}, "llm.run")
    assert isinstance(differ, proto.LlmRunReply)
    ok, err, res = run_result(differ)
    assert not ok and err == "the 2 instances gave 2 different answers" and res["tokens_agree"] == 0
    failed = decode_as(proto.LlmRunReply, {"instances": [instance([1], 0.1, 0.2, 1.0),
                                                         instance([], 0.0, 0.0, 0.0, ok=False)], "wall_s": 1.0}, "llm.run")
    assert isinstance(failed, proto.LlmRunReply)
    ok, err, _ = run_result(failed)
    assert not ok and err == "1 of 2 instances failed: exit 1: boom"


def test_an_agent_error_is_a_failed_invocation(tmp_path: Path) -> None:
    run = schema.load(write(tmp_path, SCN)).workloads[0].spec
    out = LlmKind().invoke(Agent(error="no model named 'm1'"), run, {"loader": "disk", "n": 1}, 60)  # type: ignore[arg-type]
    assert not out.ok and "no model named 'm1'" in (out.error or "")


MIGRATE = f"""\
name: t
testbed: {TWO}
placement: {{create_on: node0, invoke_on: [node0]}}
modes:
  tokens: {{params: {{method: tokens}}}}
  net: {{params: {{method: kv-net}}}}
workloads:
  - name: mig
    kind: llm
    action: migrate
    to: node1
    method: "${{method}}"
    preset: ci
    prompt: "p"
    context: "${{context}}"
    generated: 4
    tokens: 4
    arrival: {{pattern: fixed, count: 1}}
    sweep: {{context: [64]}}
"""

IN_REPLY = {"id": "h1", "method": "kv-net", "tokens": [5, 6, 7, 8], "import_s": 0.002, "first_token_s": 0.003,
            "downtime": {"export_s": 0.001, "import_s": 0.002, "first_token_s": 0.003, "total_s": 0.006},
            "token_gap_s": 0.0015, "downtime_tokens": 4.0,
            "bytes": {"handle": 900, "net": 1106171, "kv": 1105920, "header": 251}}


class PeerAgent:
    """Agents of node0 (A) and node1 (B) that record what each was asked."""

    def __init__(self, log: list[tuple[str, str, dict[str, Any]]], node: str, sent: str = "sent") -> None:
        self.log, self.node, self.sent = log, node, sent

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        self.log.append((self.node, op, dict(args or {})))
        if op == "llm.migrate_out":
            return Exchange({"id": "h1", "format": 1, "timings": {"prefill_s": 0.5, "export_s": 0.001}}, 1.0)
        if op == "llm.migrate_in":
            return Exchange(IN_REPLY, 2.0)
        if op == "llm.migrate_status":
            return Exchange({"id": "h1", "state": self.sent}, 0.1)
        raise AssertionError(op)


def _targets(log: list[tuple[str, str, dict[str, Any]]], sent: str = "sent") -> dict[str, Any]:
    from contextlib import nullcontext

    from testbed.scenario.kinds.base import Target

    return {n: Target(None, lambda timeout, n=n: nullcontext(PeerAgent(log, n, sent)))  # type: ignore[arg-type, misc]
            for n in ("node0", "node1")}


def test_a_migration_relays_the_handle_and_checks_the_sender(tmp_path: Path) -> None:
    spec = schema.load(write(tmp_path, MIGRATE)).workloads[0].spec
    assert isinstance(spec, LlmSpec)
    log: list[tuple[str, str, dict[str, Any]]] = []
    kind = LlmKind()
    kind.attach(_targets(log), {"node0": "10.213.0.10", "node1": "10.213.0.11"})
    out = kind.invoke(PeerAgent(log, "node0"), spec, {"method": "kv-net", "context": 64, "node": "node0"}, 60)
    assert out.ok, out.error
    assert [(n, op) for n, op, _ in log] == [("node0", "llm.migrate_out"), ("node1", "llm.migrate_in"),
                                             ("node0", "llm.migrate_status")]
    assert log[0][2]["bind"] == "10.213.0.10" and log[0][2]["context"] == 64  # A listens where B can reach it
    assert log[1][2]["handle"] == {"id": "h1", "format": 1, "timings": {"prefill_s": 0.5, "export_s": 0.001}}
    r = out.result
    assert r is not None and r["downtime_ms"] == pytest.approx(6.0) and r["bytes_net"] == 1106171
    assert r["tokens_crc"] == crc_of((5, 6, 7, 8)) and r["source_prefill_ms"] == pytest.approx(500.0)


def test_a_kv_net_sender_that_did_not_finish_fails_the_invocation(tmp_path: Path) -> None:
    spec = schema.load(write(tmp_path, MIGRATE)).workloads[0].spec
    assert isinstance(spec, LlmSpec)
    log: list[tuple[str, str, dict[str, Any]]] = []
    kind = LlmKind()
    kind.attach(_targets(log, sent="timeout"), {"node0": "10.213.0.10"})
    out = kind.invoke(PeerAgent(log, "node0", "timeout"), spec, {"method": "kv-net", "context": 64, "node": "node0"}, 60)
    assert not out.ok and "did not finish" in (out.error or "")
    # tokens: no address needed, no status asked
    log.clear()
    out = kind.invoke(PeerAgent(log, "node0"), spec, {"method": "tokens", "context": 64, "node": "node0"}, 60)
    assert out.ok and [op for _, op, _ in log] == ["llm.migrate_out", "llm.migrate_in"] and log[0][2].get("bind") is None


PLACE = f"""\
name: t
testbed: {TWO}
placement: {{create_on: node0, invoke_on: [node0]}}
modes:
  local: {{params: {{route: locality}}}}
  random: {{params: {{route: random}}}}
workloads:
  - name: serve
    kind: llm
    action: place
    models: [m0, m1]
    homes: {{m0: node0, m1: node1}}
    route: "${{route}}"
    loader: disk
    prompt: "p"
    max_tokens: 2
    arrival: {{pattern: fixed, count: 1}}
"""


class RunAgent:
    def __init__(self, log: list[tuple[str, dict[str, Any]]], node: str) -> None:
        self.log, self.node = log, node

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        assert op == "llm.run"
        self.log.append((self.node, dict(args or {})))
        return Exchange({"instances": [instance([1, 2], 0.05, 0.2, 900.0)], "wall_s": 0.3}, 0.3)


def test_placement_routes_by_locality_or_a_seeded_draw(tmp_path: Path) -> None:
    from contextlib import nullcontext

    from testbed.scenario.kinds.base import Target

    spec = schema.load(write(tmp_path, PLACE)).workloads[0].spec
    assert isinstance(spec, LlmSpec)
    log: list[tuple[str, dict[str, Any]]] = []
    kind = LlmKind()
    kind.attach({n: Target(None, lambda t, n=n: nullcontext(RunAgent(log, n)))  # type: ignore[arg-type, misc]
                 for n in ("node0", "node1")}, {})
    for seq in range(4):
        out = kind.invoke(None, spec, {"route": "locality", "seq": seq, "seed": 1, "rep": 0}, 60)  # type: ignore[arg-type]
        assert out.ok and out.result is not None and out.result["local"] == 1
    # the home of m0 is node0, of m1 node1; at home the checkpoint stays in the page cache
    assert [(n, a["model"], a["drop"]) for n, a in log] == [("node0", "m0", "none"), ("node1", "m1", "none")] * 2
    log.clear()
    draws = []
    for seq in range(8):
        out = kind.invoke(None, spec, {"route": "random", "seq": seq, "seed": 1, "rep": 0}, 60)  # type: ignore[arg-type]
        assert out.result is not None
        draws.append((log[-1][0], out.result["local"], log[-1][1]["drop"]))
    # away from home the model's pages are dropped first: it is read cold from that node's disk
    assert all((local == 1) == (drop == "none") for _, local, drop in draws)
    assert sum(1 for _, local, _ in draws if not local) == 5  # seed 1's draws: 5 of 8 away from home
    again = [kind._place(spec, {"route": "random", "seq": s, "seed": 1, "rep": 0})[0] for s in range(8)]
    assert again == [n for n, _, _ in draws]  # the same draws every time
