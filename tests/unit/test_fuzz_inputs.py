"""Property-based fuzzing of the two parsers (topology, scenario) and --set, seeded with the
shipped files: whatever the input, the result is a valid topology/scenario or one clean
UserError (exit code 2, one printable line), within a time and a memory bound, and nothing is
created. About 10,000 examples in all (EXAMPLES below); part of the normal `pytest tests` run."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.config import topology
from testbed.config.yamlfile import load_document
from testbed.errors import ConfigError, UserError, printable
from testbed.scenario.spec import schema
from testbed.ui import cli

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = {p.name: p.read_text() for p in sorted((REPO / "testbeds").glob("*.yaml"))}
SCENARIOS = {p.name: p.read_text() for p in sorted((REPO / "scenarios").glob("*.yaml"))}
HOST = topology.HostFacts(mem_available=64 << 30, cpus=8, hugepages_free=8 << 30)
# Per-test example counts: 10,000 in all. Time per example (seconds) is asserted per example;
# the alarm catches a hang, RLIMIT_AS a runaway allocation.
# CXLTB_FUZZ_SCALE=10 fuzzes ten times as long (e.g. before a release).
_SCALE = float(os.environ.get("CXLTB_FUZZ_SCALE", "1"))
EXAMPLES = {k: max(1, int(v * _SCALE)) for k, v in {"topology": 3500, "scenario": 2500, "set": 2500, "trace": 1500}.items()}
# The same examples every run (a failure in CI reproduces); CXLTB_FUZZ_RANDOM=1 explores anew.
_FIXED = not os.environ.get("CXLTB_FUZZ_RANDOM")
PER_EXAMPLE_S = 3.0
HANG_S = 20
MEMORY_HEADROOM = 1536 << 20

# Values fuzzing found trouble with, and their neighbours.
NASTY = [
    ".inf", "-.inf", ".nan", ".NaN", "1" + "0" * 400, "9" * 5000, "1" + "0" * 400 + "GiB", "99999999999999999999GiB",
    "1.0e+400", "-1", "0", "0x10", "0o7", "1:30:00", "2024-13-45", "2024-01-01", "~", "null", "yes", "on", "[]", "{}",
    "[exec]", "[[exec]]", "all", "spread", "{node: all}", "&r [*r]", "*nowhere", "[*r]", "'" + "a" * 300 + "'",
    '"\\e[2J\\0"', '"a\\nb"', '"a\\u202eb"', "../images/bookworm", "../../etc/passwd", "/etc/shadow", "/dev/zero",
    "/dev/stdin", "/proc/self/environ", "traces/bursty.csv", "../testbeds/two-node.yaml", "10.0.0.0/8", "240.0.0.0/4",
    "127.0.0.0/24", "169.254.1.0/24", "10.0.2.0/24", "192.168.7.0/28", "/dev/hugepages,share=on", "{~: 1}",
    "{1: 2, a: b}", "{? [a]: 1}", "[" * 60 + "]" * 60, "{a: " * 40 + "1" + "}" * 40, "!!python/object:os.system",
    "!!binary AAAA", "!!set {a, b}", "!!omap [a: 1]", "!!str 3", "((((((((((((((((count", "p99_ms < 1e999",
    "- " * 50 + "count > 0", "${nonce}", "$${x}", "${", "²", "٣", "x" * 5000, "ratio(memory, a, b) < 1",
    "{pattern: poisson, rate: .inf, duration: 1s}", "{pattern: trace, file: /etc/passwd}",
    "{pattern: fixed, count: 99999999999}", "{pattern: closed, clients: 0, count: 1}", "<<: {a: 1}",
]
# Values that fit somewhere: they get the parsers past the first check, to the deeper ones.
BENIGN = [
    "1", "2", "0", "0.5", "10s", "500ms", "node0", "node1", "node2", "all", "spread", "[node0, node1]", "{node: node1}",
    "{create_on: node0, invoke_on: [node1]}", "true", "false", "x", "fixed", "poisson", "closed", "trace", "exec",
    "agent", "restore", "sandbox", "64", "1GiB", "512MiB", "4GiB", "'${n}'", "'${mode}'", "[1, 2]", "{a: 1}",
    "{pattern: fixed, count: 2}", "{pattern: poisson, rate: 2, duration: 3s}", "mhd0", "hugetlbfs", "shm", "kvm",
    "tcg", "debian", "mmio", "direct", "patched", "[echo, hi]", "ping", "count > 0", "p99_ms < 5",
]
ALPHABET = "[]{}:,&*!|>'\"#%@`-? \n\t\\0123456789.aZ_~=$()\x00\x1b\u202e²é"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of testbeds/, scenarios/ and the trace, so relative references resolve."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "testbeds", root / "testbeds")
    shutil.copytree(REPO / "scenarios", root / "scenarios", ignore=shutil.ignore_patterns("*.py"))
    return root


@pytest.fixture(scope="module", autouse=True)
def bounds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Memory: the address space may grow by MEMORY_HEADROOM at most. Nothing may be created
    under the state or cache roots (pointed at empty folders)."""
    state = tmp_path_factory.mktemp("state")
    env = {"CXLTB_STATE_DIR": str(state / "state"), "CXLTB_CACHE_DIR": str(state / "cache"),
           "CXLTB_SHM_DIR": str(state / "shm")}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert list(state.iterdir()) == [], "parsing created files"


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _expire(_signo: int, _frame: FrameType | None) -> None:
    raise TimeoutError(f"an example ran longer than {HANG_S} s")


def clean(fn: Callable[[], Any], files: tuple[str, ...] = ()) -> None:
    """fn() returns, or raises one clean UserError; quickly."""
    old = signal.signal(signal.SIGALRM, _expire)
    signal.alarm(HANG_S)
    t0 = time.monotonic()
    try:
        fn()
    except UserError as exc:
        assert exc.exit_code == 2
        text = str(exc)
        assert text and len(printable(text)) < 1000
        if isinstance(exc, ConfigError):
            # ConfigError escapes what it quotes: nothing raw reaches the terminal.
            assert text == printable(text), text
            assert not files or exc.path in files or exc.path.endswith((".yaml", ".csv")), exc.path
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < PER_EXAMPLE_S


# --- mutations ------------------------------------------------------------------------------

VALUES = st.one_of(st.sampled_from(BENIGN), st.sampled_from(NASTY), st.text(ALPHABET, max_size=12))


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, str]) -> tuple[str, str]:
    """(seed name, text): a shipped file with a few line-level and character-level mutations."""
    name = draw(st.sampled_from(sorted(seeds)))
    lines = seeds[name].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "value", "value", "value", "insert", "delete", "dup", "chars", "indent"]))
        keyed = [j for j, ln in enumerate(lines) if ": " in ln and not ln.lstrip().startswith("#")]
        i = draw(st.sampled_from(keyed)) if op == "value" and keyed else draw(st.integers(0, max(0, len(lines) - 1)))
        line = lines[i] if lines else ""
        if op == "value" and ": " in line:
            key, _, _ = line.partition(": ")
            lines[i] = f"{key}: {draw(VALUES)}"
        elif op == "insert":
            indent = " " * draw(st.sampled_from([0, 2, 4, 6]))
            key = draw(st.sampled_from(["name", "memory", "seed", "rate", "kind", "image", "subnet", "file",
                                        "placement", "params", "nodes", "~", "1", "<<", "x\x1by"]))
            lines.insert(i, f"{indent}{key}: {draw(VALUES)}")
        elif op == "delete" and lines:
            del lines[i]
        elif op == "dup" and lines:
            lines.insert(i, line)
        elif op == "indent" and lines:
            lines[i] = " " * draw(st.sampled_from([1, 2, 3])) + line
        else:
            pos = draw(st.integers(0, len(line)))
            lines[i] = line[:pos] + draw(st.text(ALPHABET, min_size=1, max_size=6)) + line[pos:]
    return name, "\n".join(lines) + "\n"


def _keypaths(data: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.append(p)
            out += _keypaths(v, p)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            for part in (str(i), *([v["name"]] if isinstance(v, dict) and isinstance(v.get("name"), str) else [])):
                out.append(f"{prefix}.{part}")
                out += _keypaths(v, f"{prefix}.{part}")
    return out


SCENARIO_KEYS = {name: _keypaths(load_document(REPO / "scenarios" / name).data) for name in SCENARIOS}


@st.composite
def overrides(draw: st.DrawFn) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(sorted(SCENARIOS)))
    out = []
    for _ in range(draw(st.integers(1, 2))):
        real = st.sampled_from(SCENARIO_KEYS[name])
        key = draw(st.one_of(real, real, real, st.text(ALPHABET + "wor.kloads", min_size=0, max_size=20),
                             st.sampled_from(["workloads.²", "workloads.٣", "workloads." + "9" * 5000, "a." * 40 + "b",
                                              "workloads.0.kind", "placement", "testbed", "modes.x.setup.0.nodes"])))
        value = draw(st.one_of(st.sampled_from(BENIGN), st.sampled_from(BENIGN), VALUES))
        out.append(f"{key}={value}")
    return name, out


# --- the properties -------------------------------------------------------------------------

@settings(max_examples=EXAMPLES["topology"], deadline=None, derandomize=_FIXED, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated(TOPOLOGIES))
def test_topology_parser_fuzz(tree: Path, case: tuple[str, str]) -> None:
    name, text = case
    path = tree / "testbeds" / f"fuzz-{name}"
    path.write_text(text, encoding="utf-8")
    clean(lambda: topology.load(path, HOST), (str(path),))


@settings(max_examples=EXAMPLES["scenario"], deadline=None, derandomize=_FIXED, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated(SCENARIOS))
def test_scenario_parser_fuzz(tree: Path, case: tuple[str, str]) -> None:
    name, text = case
    path = tree / "scenarios" / f"fuzz-{name}"
    path.write_text(text, encoding="utf-8")
    clean(lambda: schema.load(path))


@settings(max_examples=EXAMPLES["set"], deadline=None, derandomize=_FIXED, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=overrides())
def test_set_overrides_fuzz(tree: Path, case: tuple[str, list[str]]) -> None:
    name, sets = case
    clean(lambda: schema.load(tree / "scenarios" / name, sets))


@settings(max_examples=EXAMPLES["trace"], deadline=None, derandomize=_FIXED, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(st.text(ALPHABET + ",", max_size=30), max_size=8),
       ref=st.sampled_from(["t.csv", "traces/bursty.csv", "../testbeds/two-node.yaml", "/etc/passwd", "/dev/zero",
                            ".", "traces", "missing.csv", "x" * 300]))
def test_trace_fuzz(tree: Path, rows: list[str], ref: str) -> None:
    scn_dir = tree / "scenarios"
    (scn_dir / "t.csv").write_text("\n".join(["time,function", *rows]) + "\n", encoding="utf-8")
    text = SCENARIOS["trace-replay.yaml"].replace("file: traces/bursty.csv", f"file: '{ref}'")
    path = scn_dir / "fuzz-trace.yaml"
    path.write_text(text)
    clean(lambda: schema.load(path))


# --- the same through the command line --------------------------------------------------------

@pytest.mark.parametrize(("argv_tail", "text"), [
    (["up", "-f"], "name: t\nnodes: 1\nmhds: &r [*r]\n"),
    (["up", "-f"], "name: t\nnodes: {count: 1, memory: 1" + "0" * 400 + "GiB}\n"),
    (["up", "-f"], "name: \"t\\e[31m\"\nnodes: 1\n"),
    (["run"], "name: s\ntestbed: ../testbeds/two-node.yaml\nworkloads:\n  - {name: w, kind: [exec], argv: [x],"
              " arrival: {pattern: fixed, count: 1}}\n"),
    (["run"], "name: s\ntestbed: ../testbeds/two-node.yaml\nplacement: all\nworkloads:\n  - {name: w, kind: exec,"
              " argv: [x], arrival: {pattern: poisson, rate: .inf, duration: 1s}}\n"),
])
def test_cli_prints_one_line_and_returns_2(tree: Path, argv_tail: list[str], text: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tree / "scenarios" / "cli-case.yaml"
    path.write_text(text)
    ops = cli.Ops(host_facts=lambda: HOST, up=lambda *a: pytest.fail("up must not run"),
                  down=lambda *a: pytest.fail("down must not run"))
    assert cli.main([*argv_tail, str(path)], ops=ops) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"testbed: error: {path}:"), err
    assert "Traceback" not in err and "\x1b" not in err


def test_cli_set_prints_one_line_and_returns_2(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ops = cli.Ops(up=lambda *a: pytest.fail("up must not run"))
    for value in ("workloads.²=1", "seed=&a [*a]", "workloads.json.arrival.count=.nan"):
        assert cli.main(["run", str(tree / "scenarios" / "smoke.yaml"), "--set", value], ops=ops) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("testbed: error: ") and "Traceback" not in err, err
