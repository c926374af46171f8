"""Scenario validation: every error names file, line and field; --set overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from testbed.errors import ConfigError, UserError
from testbed.scenario.spec import schema

REPO = Path(__file__).resolve().parents[2]
TWO = REPO / "testbeds" / "two-node.yaml"

GOOD = f"""\
name: t
testbed: {TWO}
seed: 3
params: {{size: 8}}
modes:
  a: {{placement: {{node: node0}}}}
  b: {{placement: {{node: node1}}, params: {{size: 16}}}}
workloads:
  - name: w
    kind: exec
    argv: [echo, "${{size}}", "${{mode}}"]
    arrival: {{pattern: poisson, rate: 2, duration: 5s}}
  - name: p
    kind: agent
    op: ping
    arrival: {{pattern: closed, clients: 2, count: 4}}
assertions: ["p99_ms < 500 for mode a", "ratio(memory, a, b) < 2"]
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        schema.load(path, overrides)
    return info.value


def test_good_scenario_parses(tmp_path: Path) -> None:
    scn = schema.load(write(tmp_path, GOOD))
    assert [m.name for m in scn.modes] == ["a", "b"]
    w = scn.workloads[0]
    assert w.arrival.pattern is schema.Pattern.POISSON and w.arrival.duration == 5.0
    assert scn.values(scn.mode("b"), w)["size"] == 16 and scn.values(scn.mode("a"), w)["size"] == 8
    assert scn.placement_of(scn.mode("b"), w).invoke_on == ("node1",)
    assert scn.placement.invoke_on == ("node0", "node1")  # default: spread over every node
    assert scn.topology.name == "two-node" and scn.topology_file == str(TWO)


def test_shipped_smoke_scenario_parses() -> None:
    scn = schema.load(REPO / "scenarios" / "smoke.yaml")
    assert {m.name for m in scn.modes} == {"node0", "node1"}
    patterns = {w.arrival.pattern for w in scn.workloads}
    assert {schema.Pattern.POISSON, schema.Pattern.CLOSED, schema.Pattern.FIXED} <= patterns
    assert [w.name for w in scn.workloads if w.base == "instances"] == [
        "instances[instances=1]", "instances[instances=2]", "instances[instances=4]"]


@pytest.mark.parametrize(("text", "where", "message"), [
    (GOOD.replace("seed: 3", "seed: 3\nbogus: 1"), (4, "bogus"), "unknown key"),
    (GOOD.replace("rate: 2, ", ""), (12, "workloads[0].arrival"), "pattern poisson needs 'rate'"),
    (GOOD.replace("{node: node1}", "{node: node7}"), (7, "modes.b.placement.node"), "unknown node 'node7'"),
    (GOOD.replace("kind: agent", "kind: nope"), (14, "workloads[1].kind"),
     "unknown kind 'nope' (kinds: agent, exec, kv, llm, restore, sandbox)"),
    (GOOD.replace('"${mode}"', '"${sise}"'), (11, "workloads[0].argv[2]"), "unknown placeholder ${sise}"),
    (GOOD.replace("duration: 5s", "duration: 5 parsecs"), (12, "workloads[0].arrival.duration"), "expected a duration"),
    (GOOD.replace("clients: 2, count: 4", "clients: 2, count: 4, duration: 3"), (16, "workloads[1].arrival"),
     "exactly one of count and duration"),
    (GOOD.replace("clients: 2", "clients: 2, rate: 1"), (16, "workloads[1].arrival.rate"), "not used by pattern closed"),
    (GOOD.replace("p99_ms < 500 for mode a", "p99_ms < < 500"), (17, "assertions[0]"), "expected a number"),
    (GOOD.replace("ratio(memory, a, b)", "ratio(memory, a, c)"), (17, "assertions[1]"), "unknown mode 'c'"),
    (GOOD.replace("p99_ms < 500", "p99_latency < 500"), (17, "assertions[0]"), "unknown name 'p99_latency'"),
    (GOOD.replace("name: p\n", "name: w\n"), (13, "workloads[1].name"), "duplicate workload name 'w'"),
    (GOOD.replace("params: {size: 8}", "params: {node: 8}"), (4, "params.node"), "built-in placeholder"),
    (GOOD.replace("{placement: {node: node0}}", "{placement: {node: node0, spread: all}}"), (6, "modes.a.placement"),
     "exactly one of"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, text: str, where: tuple[int, str], message: str) -> None:
    exc = error(tmp_path, text)
    assert (exc.line, exc.field) == where, str(exc)
    assert message in exc.message
    assert str(exc).startswith(f"{tmp_path / 's.yaml'}:{where[0]}: {where[1]}: ")


def test_inline_topology_errors_point_into_the_scenario(tmp_path: Path) -> None:
    text = """\
    name: t
    testbed:
      name: tb
      nodes: {count: 99}
    workloads:
      - {name: w, kind: exec, argv: ["true"], arrival: {pattern: fixed, count: 1}}
    """
    exc = error(tmp_path, text)
    assert (exc.line, exc.field) == (4, "testbed.nodes.count") and "between 1 and 16" in exc.message


def test_inline_topology(tmp_path: Path) -> None:
    text = """\
    name: t
    testbed: {name: tb, nodes: 1, mhds: [{name: m, size: 256MiB}]}
    workloads:
      - {name: w, kind: exec, argv: ["true"], arrival: {pattern: fixed, count: 1}}
    """
    scn = schema.load(write(tmp_path, text))
    assert scn.topology.name == "tb" and scn.topology_file is None and "mhds" in scn.topology.text


def test_missing_topology_file(tmp_path: Path) -> None:
    exc = error(tmp_path, GOOD.replace(str(TWO), "nowhere.yaml"))
    assert (exc.line, exc.field) == (2, "testbed") and "relative to the scenario file" in exc.message


def test_trace_errors_name_the_trace_file(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("time,function\n0.5,f\n0.2,g\n")
    text = GOOD.replace("{pattern: poisson, rate: 2, duration: 5s}", "{pattern: trace, file: t.csv}")
    exc = error(tmp_path, text)
    assert (exc.path, exc.line, exc.field) == (str(tmp_path / "t.csv"), 3, "time") and "must not decrease" in exc.message


def test_set_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    scn = schema.load(path, ["seed=9", "workloads.w.arrival.rate=0.5", "modes.a.params.size=32",
                             "workloads.1.arrival.count=7", "repetitions=3", "description=hello world"])
    assert scn.seed == 9 and scn.repetitions == 3 and scn.description == "hello world"
    assert scn.workloads[0].arrival.rate == 0.5 and scn.workloads[1].arrival.count == 7
    assert scn.mode("a").params == {"size": 32}
    assert scn.resolved["seed"] == 9  # what meta.json records as the resolved scenario
    assert scn.hash() != schema.load(path).hash()


def test_set_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        schema.load(path, ["workloads.w.arrival.rate=fast"])
    assert info.value.field == "workloads[0].arrival.rate" and "(value from --set)" in info.value.message
    with pytest.raises(UserError, match="has no item 'nope'"):
        schema.load(path, ["workloads.nope.arrival.rate=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        schema.load(path, ["seed"])
    with pytest.raises(UserError, match="not a mapping or a list"):
        schema.load(path, ["seed.x=1"])


def test_sweep_expands_and_placeholders_see_sweep_keys(tmp_path: Path) -> None:
    text = GOOD.replace('argv: [echo, "${size}", "${mode}"]', 'argv: [echo, "${k}"]\n    sweep: {k: [1, 2]}')
    scn = schema.load(write(tmp_path, text))
    assert [w.name for w in scn.workloads][:2] == ["w[k=1]", "w[k=2]"]
    assert scn.values(scn.mode("a"), scn.workloads[1])["k"] == 2


def test_placements(tmp_path: Path) -> None:
    text = GOOD.replace("{placement: {node: node0}}", "{placement: {create_on: node0, invoke_on: [node1]}}")
    text = text.replace("{placement: {node: node1}, ", "{placement: spread, ")
    scn = schema.load(write(tmp_path, text))
    a, b = scn.mode("a").placement, scn.mode("b").placement
    assert a is not None and (a.create_on, a.invoke_on) == ("node0", ("node1",))
    assert b is not None and b.invoke_on == ("node0", "node1")
    exc = error(tmp_path, GOOD.replace("{placement: {node: node0}}", "{placement: {create_on: node0}}"))
    assert exc.field == "modes.a.placement" and "invoke_on" in exc.message
