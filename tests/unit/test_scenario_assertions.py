"""The assertion language: parsed by hand (no eval), evaluated per (mode, workload)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from testbed.scenario.spec import assertions as A


class Data:
    def __init__(self) -> None:
        self.lat = {("cold", "w"): [100.0, 200.0, 300.0, 400.0], ("tmpl", "w"): [10.0, 20.0, 30.0, 40.0],
                    ("cold", "v"): [1.0], ("tmpl", "v"): []}
        self.mem = {"cold": 1000.0, "tmpl": 400.0}

    def values(self, mode: str, workload: str, metric: str) -> Sequence[float]:
        if metric == "latency_ms":
            return self.lat.get((mode, workload), [])
        return [1.0, 1.0] if metric == "shared" else []

    def counts(self, mode: str, workload: str) -> tuple[int, int]:
        return len(self.lat.get((mode, workload), [])), 1 if (mode, workload) == ("cold", "v") else 0

    def memory(self, mode: str, workload: str, delta: bool) -> float | None:
        return self.mem[mode] / (2 if delta else 1)


MODES = ["cold", "tmpl"]
WORKLOADS = [("w", "w"), ("v", "v")]


def ok(text: str) -> bool:
    return all(c.ok for c in A.check(A.parse(text), Data(), MODES, WORKLOADS))


def test_parse_shapes() -> None:
    a = A.parse("p99_ms < 500 for mode tmpl")
    assert a.left == A.Stat("p99", "latency_ms") and a.op == "<" and a.right == A.Num(500) and a.modes == ("tmpl",)
    a = A.parse("ratio(memory, tmpl, cold) <= 0.5")
    assert a.left == A.Pair("ratio", A.Var("memory"), "tmpl", "cold") and a.mode_names() == {"tmpl", "cold"}
    a = A.parse("(p50(latency_ms) + 2 * -mean(function_ms)) / 3 != 1 for workload w, v mode cold")
    assert a.workloads == ("w", "v") and a.modes == ("cold",) and a.metrics() == {"latency_ms", "function_ms"}
    assert A.parse("median(x) > 1 for workload 'a[b=1]'").workloads == ("a[b=1]",)
    assert A.parse("p99.9_ms < 1").left == A.Stat("p99.9", "latency_ms")
    assert A.parse("p99_ms-p50_ms < 1").left == A.BinOp("-", A.Stat("p99", "latency_ms"), A.Stat("p50", "latency_ms"))


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty assertion"),
    ("p99_ms", "expected a comparison"),
    ("p99_ms < ", "expected a number, a name or '(', got the end"),
    ("p99_ms < 5 6", "expected the end, got '6'"),
    ("__import__('os') < 1", "unknown function '__import__'"),
    ("open < 1", "unknown name 'open'"),
    ("p99_ms < 1 for nodes x", "expected 'mode' or 'workload'"),
    ("p99_ms < 1; x", "unexpected character ';'"),
    ("p101_ms < 1", "unknown name 'p101_ms'"),
    ("ratio(memory, a) < 1", "expected ','"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(A.AssertionSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        A.parse(text)


def test_evaluation() -> None:
    assert ok("p99_ms < 50 for mode tmpl workload w")
    assert not ok("p99_ms < 50 for workload w")  # cold's p99 is 397
    assert ok("median_ms == 250 for mode cold workload w")
    assert ok("ratio(memory, tmpl, cold) < 0.5")
    assert ok("ratio(memory_delta, tmpl, cold) == 0.4")
    assert ok("diff(p50_ms, cold, tmpl) == 225 for workload w")
    assert ok("min(shared) == 1")
    assert ok("count == 4 for workload w")
    assert ok("errors == 1 for mode cold workload v")
    assert ok("error_rate <= 1 for mode cold")
    assert ok("max_ms - min_ms == 300 for mode cold workload w")


def test_no_data_fails_with_a_reason() -> None:
    checks = A.check(A.parse("p99_ms < 50 for mode tmpl workload v"), Data(), MODES, WORKLOADS)
    assert [(c.ok, c.detail) for c in checks] == [(False, "no latency_ms values in mode tmpl, workload v")]
    checks = A.check(A.parse("ratio(p99_ms, cold, tmpl) < 5 for workload v"), Data(), MODES, WORKLOADS)
    assert not checks[0].ok
    checks = A.check(A.parse("p99_ms < 5 for workload nothing"), Data(), MODES, WORKLOADS)
    assert [c.detail for c in checks] == ["the scope matches no (mode, workload)"]


def test_scope_matches_sweep_base_names() -> None:
    checks = A.check(A.parse("count == 4 for workload w"), Data(), MODES, [("w", "w"), ("v", "w")])
    assert len(checks) == 4
