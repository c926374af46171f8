"""The `kv` workload kind end to end without VMs: the host side (Conductor, the kind) drives the
real agent's kv.* ops in this process, through `tbagent serve`'s own request handling, on a plain
file standing in for the MHD (node0 is head 0, node1 head 1). Every design must answer the same
tokens; kv-cxl reuses the prefixes the trace shares, kv-net moves the cache, colocated neither."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tbagent import serve
from tbagent.functions.llm import PRESETS
from tbagent.kv import disagg
from tbagent.store import Store

from testbed.access.agent import AgentError, Exchange
from testbed.scenario.kinds.base import Target
from testbed.scenario.kinds.kv import PRESET_SHAPES, KvKind, KvSpec
from testbed.scenario.spec import schema
from tests.unit.llmdevice import cache_lib_fixture, device_fixture  # noqa: F401  (fixtures)

from .test_scenario_schema import error
from .test_scenario_schema import write as write_scenario

REPO = Path(__file__).resolve().parents[2]
TWO = REPO / "testbeds" / "two-node.yaml"
SAMPLE = REPO / "scenarios" / "traces" / "mooncake-sample.jsonl"

SCN = f"""\
name: t
testbed: {TWO}
placement: {{create_on: node0, invoke_on: [node0]}}
setup:
  - {{name: arena, kind: kv, nodes: [node0, node1], action: format, preset: tiny, block_tokens: 4, slots: 64}}
modes:
  colocated: {{params: {{design: colocated}}}}
  kv-net: {{params: {{design: kv-net}}}}
  kv-cxl: {{params: {{design: kv-cxl}}}}
workloads:
  - name: serve
    kind: kv
    design: "${{design}}"
    trace: sample.jsonl
    preset: tiny
    block_tokens: 4
    max_blocks: 8
    max_output: 3
    prefill: [node0]
    decode: [node1]
    arrival: {{pattern: trace, file: sample.jsonl, limit: 12}}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sample.jsonl").write_text(SAMPLE.read_text())  # a trace lies beside its scenario
    return write_scenario(tmp_path, text)


class InProcessAgent:
    """The real agent's request handling (tbagent.serve.handle), in this process."""

    def __init__(self, node: str) -> None:
        self.node = node

    def exchange(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Exchange:
        reply = serve.handle(json.dumps({"v": 1, "id": 1, "op": op, "args": dict(args or {})}))
        if not reply["ok"]:
            raise AgentError(self.node, op, reply["error"]["code"], reply["error"]["message"])
        return Exchange(reply["result"], None)


@pytest.fixture(name="kind")
def kind_fixture(device: str, monkeypatch: pytest.MonkeyPatch) -> KvKind:
    heads = {"node0": 0, "node1": 1}
    current: dict[str, str] = {}

    def open_store(mhd: str, head: int | None = None) -> Store:
        return Store(device, heads[current["node"]])

    monkeypatch.setattr(disagg, "open_store", open_store)
    monkeypatch.setattr("tbagent.kv.cli.open_store", open_store)

    @contextmanager
    def agent_of(node: str) -> Iterator[InProcessAgent]:
        current["node"] = node  # which head the in-process agent is, for this request
        yield InProcessAgent(node)

    kind = KvKind()
    kind.attach({n: Target(None, lambda t, n=n: agent_of(n)) for n in heads},  # type: ignore[arg-type, misc]
                {"node0": "127.0.0.1", "node1": "127.0.0.1"})
    return kind


def test_every_design_answers_the_same_and_only_kv_cxl_reuses(kind: KvKind, tmp_path: Path) -> None:
    scn = schema.load(write(tmp_path, SCN))
    spec = scn.workloads[0].spec
    fmt = scn.setup[0].spec
    assert isinstance(spec, KvSpec) and isinstance(fmt, KvSpec)
    for node in ("node0", "node1"):
        with kind.targets[node].agent(60) as agent:
            assert kind.invoke(agent, fmt, {}, 60).ok
    results: dict[str, list[dict[str, Any]]] = {}
    for design in ("colocated", "kv-net", "kv-cxl"):
        results[design] = []
        for i in range(8):
            values = {"design": design, "function": f"r{i}", "mode": design, "workload": "serve", "rep": 0}
            out = kind.invoke(None, spec, values, 60)  # type: ignore[arg-type]
            assert out.ok and out.result is not None, out.error
            results[design].append(out.result)
    answers = {d: [r["tokens"] for r in rs] for d, rs in results.items()}
    assert answers["kv-net"] == answers["colocated"] == answers["kv-cxl"]
    # the sample's requests all start with hash id 0: after the first, kv-cxl finds that block in the pool
    assert all(r["blocks_hit"] == 0 for r in results["colocated"] + results["kv-net"])
    assert results["kv-cxl"][0]["blocks_hit"] == 0 and all(r["blocks_hit"] >= 1 for r in results["kv-cxl"][1:])
    assert all(r["bytes_net"] == 0 for r in results["kv-cxl"] + results["colocated"])
    assert all(r["bytes_net"] > 0 for r in results["kv-net"])  # the cache crossed the node network
    assert {r["prefill_node"] for r in results["kv-cxl"]} == {"node0"}
    assert {r["decode_node"] for r in results["kv-cxl"]} == {"node1"}


def test_an_event_that_is_no_request_fails_clearly(kind: KvKind, tmp_path: Path) -> None:
    spec = schema.load(write(tmp_path, SCN)).workloads[0].spec
    assert isinstance(spec, KvSpec)
    out = kind.invoke(None, spec, {"design": "kv-cxl", "function": "r99999", "mode": "m", "rep": 0}, 60)  # type: ignore[arg-type]
    assert not out.ok and "is no request of" in (out.error or "")


@pytest.mark.parametrize(("change", "field", "message"), [
    ("    design: \"${design}\"\n", "workloads[0]", "action serve needs 'design'"),
    ("    preset: tiny\n    block_tokens: 4\n", "workloads[0].preset", "expected one of tiny, ci, small, base"),
    ("    decode: [node1]\n", "workloads[0]", "action serve needs 'decode'"),
])
def test_spec_errors(tmp_path: Path, change: str, field: str, message: str) -> None:
    text = SCN.replace(change, "    preset: huge\n    block_tokens: 4\n" if "preset" in change else "")
    (tmp_path / "sample.jsonl").write_text(SAMPLE.read_text())
    exc = error(tmp_path, text)
    assert message in exc.message and exc.field.startswith(field), str(exc)


def test_the_preset_shapes_agree_with_the_model() -> None:
    assert PRESET_SHAPES == {name: (c.layers, c.dim) for name, c in PRESETS.items()}


def test_the_policy_can_come_from_a_mode(kind: KvKind, tmp_path: Path) -> None:
    text = (SCN.replace("    prefill: [node0]\n", "    prefill: [node0, node1]\n")
            .replace("    decode: [node1]\n", "    decode: [node1]\n    policy: \"${policy}\"\n")
            .replace("  colocated: {params: {design: colocated}}\n", "  rr: {params: {design: kv-cxl, policy: round-robin}}\n")
            .replace("  kv-net: {params: {design: kv-net}}\n", "")
            .replace("  kv-cxl: {params: {design: kv-cxl}}\n", "  aware: {params: {design: kv-cxl, policy: cache-aware}}\n"))
    scn = schema.load(write(tmp_path, text))
    spec, fmt = scn.workloads[0].spec, scn.setup[0].spec
    assert isinstance(spec, KvSpec) and isinstance(fmt, KvSpec)
    for node in ("node0", "node1"):
        with kind.targets[node].agent(60) as agent:
            assert kind.invoke(agent, fmt, {}, 60).ok
    placed = []
    for i in range(4):
        values = {"design": "kv-cxl", "policy": "round-robin", "function": f"r{i}", "mode": "rr", "workload": "serve", "rep": 0}
        out = kind.invoke(None, spec, values, 60)  # type: ignore[arg-type]
        assert out.ok and out.result is not None, out.error
        placed.append(out.result["prefill_node"])
    assert placed == ["node0", "node1", "node0", "node1"]  # round-robin rotates whatever is cached
    bad = text.replace("policy: round-robin}", "policy: random}")
    exc = error(tmp_path, bad)
    assert "policy 'random' is not one of cache-aware, round-robin, cache-only" in exc.message, str(exc)
