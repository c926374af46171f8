"""Bad topology files, scenario files, --set overrides and traces, as fuzzing found them: each
is one ConfigError/UserError naming file, line and field (exit code 2 through the CLI), raised
quickly, before anything is created and without reading what it should not."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from testbed.config.topology import HostFacts, load
from testbed.errors import ConfigError, UserError
from testbed.scenario.spec import arrivals, schema
from testbed.ui import cli

REPO = Path(__file__).resolve().parents[2]
TWO = REPO / "testbeds" / "two-node.yaml"
BIG_HOST = HostFacts(mem_available=64 << 30, cpus=8)

TOPO = """\
name: t
nodes:
  count: 2
  memory: 1GiB
mhds:
  - name: m
    size: 512MiB
"""

SCN = f"""\
name: s
testbed: {TWO}
workloads:
  - name: w
    kind: exec
    argv: ["true"]
    arrival: {{pattern: poisson, rate: 2, duration: 5s}}
"""


@pytest.fixture
def alarm() -> Iterator[None]:
    """Turn a hang (the bug some of these tests catch) into a failure after 10 s."""

    def expire(_signo: int, _frame: FrameType | None) -> None:
        raise TimeoutError("hung: took more than 10 s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def topo_error(tmp_path: Path, text: str, host: HostFacts | None = BIG_HOST) -> ConfigError:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, host)
    assert info.value.path == str(path)
    return info.value


def scn_error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> ConfigError:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        schema.load(path, overrides)
    return info.value


# --- aliases, nesting, numbers ----------------------------------------------------------------

def test_recursive_alias_is_refused(tmp_path: Path, alarm: None) -> None:
    exc = topo_error(tmp_path, "name: t\nnodes: 1\nmhds: &r [*r]\n")
    assert exc.line == 3 and "recursive alias *r" in exc.message


def test_alias_expansion_is_bounded(tmp_path: Path, alarm: None) -> None:
    # 5 levels of 10 aliases expand to 111,111 values: over the bound, yet cheap for the old
    # loader (the 9-level classic below would need ~22 GB there).
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcd", "bcde", strict=True))
    exc = topo_error(tmp_path, "name: t\nnodes: 1\nparams:\n" + "".join("  " + ln + "\n" for ln in bomb.splitlines()))
    assert exc.line == 8 and "aliases expand to more than" in exc.message


def test_billion_laughs_is_refused_fast(tmp_path: Path, alarm: None) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for p, c in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{c}: &{c} [{','.join(['*' + p] * 9)}]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 600
    t0 = time.monotonic()
    exc = topo_error(tmp_path, text)
    assert "aliases expand to more than" in exc.message and time.monotonic() - t0 < 2


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    exc = topo_error(tmp_path, "name: t\nnodes: " + "[" * 1000 + "]" * 1000 + "\n")
    assert exc.line == 2 and "nested more than" in exc.message
    exc = scn_error(tmp_path, SCN + "params:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)))
    assert "nested more than" in exc.message


def test_integer_of_thousands_of_digits_is_refused(tmp_path: Path) -> None:
    exc = scn_error(tmp_path, SCN.replace("name: s\n", "name: s\nseed: 1" + "0" * 5000 + "\n"))
    assert (exc.line, "integer too long") == (2, exc.message[:16])


def test_overflowing_rate_and_memory_are_refused(tmp_path: Path) -> None:
    exc = scn_error(tmp_path, SCN.replace("rate: 2", "rate: 1" + "0" * 400))
    assert exc.line == 7 and "integer too long" in exc.message
    exc = topo_error(tmp_path, TOPO.replace("memory: 1GiB", "memory: 1" + "0" * 400 + "GiB"))
    assert (exc.line, exc.field) == (4, "nodes.memory") and "expected a size" in exc.message
    exc = topo_error(tmp_path, TOPO.replace("memory: 1GiB", "memory: 99999999999999999999GiB"))
    assert (exc.line, exc.field) == (4, "nodes.memory") and "must be between 0 and" in exc.message
    # A duration string of 400 digits is inf as a float.
    exc = scn_error(tmp_path, SCN.replace("duration: 5s", "duration: " + "9" * 400 + "s"))
    assert (exc.line, exc.field) == (7, "workloads[0].arrival.duration")


def test_non_finite_numbers_are_refused(tmp_path: Path, alarm: None) -> None:
    for text, line in [(SCN.replace("rate: 2", "rate: .inf"), 7), (SCN.replace("duration: 5s", "duration: .nan"), 7),
                       (SCN.replace("name: s\n", "name: s\ntimeout: .inf\n"), 2),
                       (SCN.replace("name: s\n", "name: s\nmemory_interval: -.inf\n"), 2),
                       (SCN.replace("rate: 2", "rate: 1.0e+400"), 7)]:
        exc = scn_error(tmp_path, text)
        assert exc.line == line and "not a finite number" in exc.message, str(exc)
    # Values the loader never sees (code building Documents) are checked where they are used.
    from testbed.config.yamlfile import Document, convert

    with pytest.raises(ConfigError, match="expected a finite number"):
        convert(Document("x.yaml", None, {}), float, float("nan"), ("rate",))
    with pytest.raises(ConfigError, match="more than 0 seconds and at most 7 days"):
        schema.seconds(Document("x.yaml", None, {}), ("timeout",), float("inf"))
    with pytest.raises(ValueError, match="finite"):
        arrivals.poisson(float("inf"), 1.0, arrivals.unit_rng(1), "f")
    with pytest.raises(ValueError, match="finite"):
        arrivals.poisson(1.0, float("nan"), arrivals.unit_rng(1), "f")


def test_set_non_finite_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCN)
    with pytest.raises(UserError, match=r"--set workloads.w.arrival.rate: not a finite number"):
        schema.load(path, ["workloads.w.arrival.rate=.inf"])


def test_open_loop_size_is_bounded(tmp_path: Path) -> None:
    exc = scn_error(tmp_path, SCN.replace("rate: 2", "rate: 1000000").replace("duration: 5s", "duration: 1h"))
    assert exc.field == "workloads[0].arrival.rate" and "more than 1000000 invocations" in exc.message


# --- keys --------------------------------------------------------------------------------------

def test_duplicate_keys_are_refused_at_the_second(tmp_path: Path) -> None:
    exc = topo_error(tmp_path, TOPO.replace("  memory: 1GiB\n", "  memory: 8GiB\n  memory: 1GiB\n"))
    assert (exc.line, exc.field) == (5, "nodes.memory") and exc.message == "duplicate key (first on line 4)"
    exc = scn_error(tmp_path, SCN + "seed: 1\nseed: 2\n")
    assert (exc.line, exc.field) == (9, "seed")


def test_null_key_in_free_form_mapping_is_refused(tmp_path: Path) -> None:
    text = SCN.replace('kind: exec\n    argv: ["true"]', "kind: agent\n    op: ping\n    args: {~: 1, a: 2}")
    exc = scn_error(tmp_path, text)
    assert exc.line == 7 and "a key must be a string, got None" in exc.message
    text = SCN.replace('argv: ["true"]', 'argv: ["true"]\n    params: {1: x}')
    assert "a key must be a string, got 1" in scn_error(tmp_path, text).message


def test_string_keys_check_of_built_documents() -> None:
    # Documents are also built from Python data (inline topologies, tests): checked there too.
    from testbed.config.yamlfile import Document
    from testbed.scenario.kinds import KINDS

    doc = Document("x.yaml", {}, {})
    with pytest.raises(ConfigError, match="a key must be a string"):
        KINDS["agent"].parse(doc, ("w",), {"op": "ping", "args": {None: 1, "a": 2}})
    with pytest.raises(ConfigError, match="a key must be a string"):
        KINDS["restore"].parse(doc, ("w",), {"action": "run", "snapshot": "s", "mode": "cold", "aliases": {None: "s"}})


# --- files -------------------------------------------------------------------------------------

def test_fifo_is_refused_without_blocking(tmp_path: Path, alarm: None) -> None:
    fifo = tmp_path / "t.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load(fifo)
    (tmp_path / "trace.csv").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "trace.csv")
    exc = scn_error(tmp_path, SCN.replace("{pattern: poisson, rate: 2, duration: 5s}", "{pattern: trace, file: trace.csv}"))
    assert exc.field == "workloads[0].arrival.file" and "not a regular file" in exc.message
    with pytest.raises(ConfigError, match="not a regular file"):
        load(tmp_path)


def test_file_size_is_bounded(tmp_path: Path) -> None:
    exc = topo_error(tmp_path, TOPO + "#" * (2 << 20) + "\n")
    assert "larger than 1024 KiB" in exc.message


def test_long_image_and_testbed_names_are_refused(tmp_path: Path) -> None:
    exc = topo_error(tmp_path, TOPO + "image: " + "a" * 300 + "\n")
    assert (exc.line, exc.field) == (8, "image") and "unsafe image name" in exc.message
    exc = scn_error(tmp_path, SCN.replace(str(TWO), "x" * 300 + ".yaml"))
    assert (exc.line, exc.field) == (2, "testbed")
    exc = scn_error(tmp_path, SCN.replace(str(TWO), "/etc/passwd"))
    assert (exc.line, exc.field) == (2, "testbed") and "ends in .yaml" in exc.message


def test_image_name_cannot_leave_images(tmp_path: Path) -> None:
    exc = topo_error(tmp_path, TOPO + "image: ../images/bookworm\n")
    assert (exc.line, exc.field) == (8, "image") and "unsafe image name" in exc.message


def test_trace_outside_the_scenario_folder_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "elsewhere" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    scn_dir = tmp_path / "scn"
    scn_dir.mkdir()
    (scn_dir / "link.csv").symlink_to(secret)
    for ref in (str(secret), "../elsewhere/shadow", "link.csv"):
        exc = scn_error(scn_dir, SCN.replace("{pattern: poisson, rate: 2, duration: 5s}", f"{{pattern: trace, file: {ref}}}"))
        assert (exc.line, exc.field) == (7, "workloads[0].arrival.file"), str(exc)
        assert "must lie in the scenario's folder" in exc.message and "SECRET" not in str(exc)
    ops = cli.Ops(up=lambda *a: pytest.fail("up must not run"))
    assert cli.main(["run", str(scn_dir / "s.yaml")], ops=ops) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SECRET" not in err and "Traceback" not in err


def test_trace_inside_the_folder_still_works(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.csv").write_text("time,function\n0,f\n1,g\n")
    path = tmp_path / "s.yaml"
    path.write_text(SCN.replace("{pattern: poisson, rate: 2, duration: 5s}", "{pattern: trace, file: traces/t.csv}"))
    assert schema.load(path).workloads[0].arrival.trace == ((0.0, "f"), (1.0, "g"))


# --- topology values ---------------------------------------------------------------------------

def test_large_subnet_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TOPO + "network: {subnet: 10.64.0.0/10}\n")
    t0 = time.monotonic()
    topo = load(path, BIG_HOST)
    assert time.monotonic() - t0 < 1.0
    assert [n.address for n in topo.nodes] == ["10.64.0.10/10", "10.64.0.11/10"]


@pytest.mark.parametrize(("subnet", "fragment"), [
    ("10.0.0.0/8", "overlaps 10.0.2.0/24"), ("10.0.2.0/24", "overlaps 10.0.2.0/24"), ("10.0.0.0/16", "overlaps"),
    ("240.0.0.0/4", "reserved"), ("127.0.0.0/24", "loopback"), ("169.254.0.0/24", "link-local"),
    ("224.0.0.0/24", "multicast"), ("0.0.0.0/24", "private IPv4"), ("100.64.0.0/24", "private IPv4"),
])
def test_special_subnets_are_refused(tmp_path: Path, subnet: str, fragment: str, alarm: None) -> None:
    exc = topo_error(tmp_path, TOPO + f"network:\n  subnet: {subnet}\n")
    assert (exc.line, exc.field) == (9, "network.subnet") and fragment in exc.message, str(exc)


@pytest.mark.parametrize("path", ["/dev/hugepages,share=off", "/mnt/huge=1", "/dev/../etc", "/a b", "relative"])
def test_unsafe_hugetlbfs_path_is_refused(tmp_path: Path, path: str) -> None:
    exc = topo_error(tmp_path, TOPO + f"    backing: hugetlbfs\n    hugetlbfs: '{path}'\n")
    assert (exc.line, exc.field) == (9, "mhds[0].hugetlbfs"), str(exc)


def test_unprintable_names_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exc = topo_error(tmp_path, TOPO.replace("name: m", 'name: "m\\e[2J\\0"'))
    assert "\x1b" not in str(exc) and "\x00" not in str(exc) and "\\x1b[2J" in str(exc)
    exc = topo_error(tmp_path, TOPO + '"col\\eour\\n": blue\n')
    assert "\x1b" not in str(exc) and "\n" not in str(exc) and "col\\x1bour\\n" in str(exc)
    ops = cli.Ops(host_facts=lambda: BIG_HOST, up=lambda *a: pytest.fail("up must not run"))
    assert cli.main(["up", "-f", str(tmp_path / "t.yaml")], ops=ops) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err


def test_trailing_newline_in_a_name_is_refused(tmp_path: Path) -> None:
    exc = topo_error(tmp_path, TOPO.replace("name: t\n", 'name: "t\\n"\n'))
    assert exc.field == "name" and "unsafe name" in exc.message


# --- scenario values ---------------------------------------------------------------------------

def test_kind_as_list_is_refused(tmp_path: Path) -> None:
    exc = scn_error(tmp_path, SCN.replace("kind: exec", "kind: [exec]"))
    assert (exc.line, exc.field) == (5, "workloads[0].kind") and "unknown kind ['exec']" in exc.message


def test_placement_all_is_refused(tmp_path: Path) -> None:
    exc = scn_error(tmp_path, SCN + "placement: all\n")
    assert (exc.line, exc.field) == (8, "placement") and "placement: spread" in exc.message
    exc = scn_error(tmp_path, SCN + "placement: {node: all}\n")
    assert (exc.line, exc.field) == (8, "placement.node")
    exc = scn_error(tmp_path, SCN + "placement: {create_on: all, invoke_on: all}\n")
    assert exc.field == "placement.create_on"
    exc = scn_error(tmp_path, SCN + "setup: [{kind: exec, argv: [x], nodes: [{a: 1}]}]\n")
    assert exc.field == "setup[0].nodes[0]" and "expected a node name" in exc.message


def test_deeply_nested_assertion_is_refused(tmp_path: Path) -> None:
    # Within the 1000-character bound, deep enough for a RecursionError without the nesting one.
    for text in ("(" * 400 + "count" + ")" * 400 + " > 0", "-" * 990 + "count>0"):
        exc = scn_error(tmp_path, SCN + f'assertions: ["{text}"]\n')
        assert (exc.line, exc.field) == (8, "assertions[0]") and "nested more than 32" in exc.message
    exc = scn_error(tmp_path, SCN + 'assertions: ["count > 1e999"]\n')
    assert "number out of range" in exc.message


@pytest.mark.parametrize("key", ["workloads.²", "workloads.٣", "workloads." + "9" * 5000])
def test_set_index_is_ascii_digits(tmp_path: Path, key: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCN)
    with pytest.raises(UserError, match="has no item") as info:
        schema.load(path, [f"{key}=1"])
    assert len(str(info.value)) < 300


def test_set_path_depth_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCN)
    with pytest.raises(UserError, match="more than 16 parts"):
        schema.load(path, ["params" + ".a" * 5000 + "=1"])


def test_cli_set_error_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCN)
    ops = cli.Ops(up=lambda *a: pytest.fail("up must not run"))
    assert cli.main(["run", str(path), "--set", "workloads.²=1"], ops=ops) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: error: --set workloads.²: workloads has no item '²'") and err.count("\n") == 1
    assert "Traceback" not in err
