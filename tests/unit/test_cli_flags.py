"""Flags and output: --json on doctor and the cache listings, kernel build --variant, the
network phase completed after an up, Ctrl-C on console --follow, log lines through the bars'
console, and shell completion."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from testbed.lifecycle import names
from testbed.lifecycle import state as st
from testbed.ui import cli
from testbed.ui.progress import PhaseProgress


@dataclass(frozen=True)
class FakeCheck:
    name: str
    ok: bool
    detail: str
    fix: str


def test_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    ops = cli.Ops(doctor=lambda: [FakeCheck("kvm", True, "/dev/kvm", ""), FakeCheck("libvirt", False, "down", "start it")])
    assert cli.main(["doctor", "--json"], ops=ops) == 1
    assert json.loads(capsys.readouterr().out) == [
        {"name": "kvm", "ok": True, "detail": "/dev/kvm", "fix": ""},
        {"name": "libvirt", "ok": False, "detail": "down", "fix": "start it"}]


@pytest.mark.parametrize(("verb", "field"), [("kernel", "list_kernels"), ("qemu", "list_qemus")])
def test_cache_listings_json(verb: str, field: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[dict[str, Any]] = [{"kind": "patched", "version": "10.0", "dir": "/c/x"}]
    ops = cli.Ops(list_kernels=lambda: rows) if field == "list_kernels" else cli.Ops(list_qemus=lambda: rows)
    assert cli.main([verb, "list", "--json"], ops=ops) == 0
    assert json.loads(capsys.readouterr().out) == rows


@pytest.mark.parametrize(("argv", "debug"), [([], False), (["--variant", "debug"], True), (["--variant", "default"], False)])
def test_kernel_build_variant(argv: list[str], debug: bool, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[bool] = []

    @dataclass(frozen=True)
    class Built:
        release: str
        directory: Path

    def build(source: Path | None, progress: Any, jobs: int | None, dbg: bool) -> Built:
        seen.append(dbg)
        return Built("6.12", Path("/k"))

    assert cli.main(["kernel", "build", *argv], ops=cli.Ops(build_kernel=build)) == 0
    assert seen == [debug]


def test_kernel_build_debug_flag_is_gone_and_global_debug_still_works() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["kernel", "build", "--debug"])
    assert info.value.code == 2


def test_makefile_kernel_debug_target_uses_the_variant() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "kernel build --variant debug" in makefile and "kernel build --debug" not in makefile


def test_one_shot_phases_are_complete_after_a_successful_up() -> None:
    con = Console(file=open("/dev/null", "w"), width=100)  # closed below
    try:
        with PhaseProgress("tb", 2, console=con) as p:
            for phase, msg in [("kernel", "k"), ("image", "i"), ("network", "net"), ("boot", "n0"), ("boot", "n1"),
                               ("ready", "n0"), ("ready", "n1")]:
                p(phase, msg)
        done = {p.bars.tasks[tid].description.split(":")[1].strip(): (p.bars.tasks[tid].completed, p.bars.tasks[tid].total)
                for tid in p.tasks.values()}
    finally:
        con.file.close()
    assert done == {"kernel": (1, 1), "image": (1, 1), "network": (1, 1), "boot": (2, 2), "ready": (2, 2)}


def test_a_failed_up_leaves_its_phase_unfinished() -> None:
    con = Console(file=open("/dev/null", "w"), width=100)  # closed below
    try:
        with pytest.raises(RuntimeError), PhaseProgress("tb", 2, console=con) as p:
            p("network", "net")
            raise RuntimeError("boom")
        (tid,) = p.tasks.values()
        assert p.bars.tasks[tid].completed == 0
    finally:
        con.file.close()


def test_ctrl_c_on_console_follow_says_nothing_about_a_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CXLTB_STATE_DIR", str(tmp_path))
    s = st.State("tb", "tb.yaml", "", "x", st.Phase.UP)
    s.nodes = {"n0": st.NodeState("n0", "cxltb-tb_n0", 4000, "10.0.0.1/24", ["m"])}
    console = names.Layout("tb").console("n0")
    console.parent.mkdir(parents=True)
    console.write_text("login:\n")

    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    ops = cli.Ops(known=lambda root: ["tb"], load_state=lambda layout: s, sleep=sleep)
    assert cli.main(["console", "n0", "--follow"], ops=ops) == 0
    cap = capsys.readouterr()
    assert cap.out == "login:\n" and "rolled back" not in cap.err and "interrupted" not in cap.err


def test_log_lines_go_through_the_bars_console() -> None:
    """Run as a fresh process (the root logger has no handlers, as in real use): a warning
    logged during the bars comes out on the bars' console, not through a second stream."""
    code = ("import logging, sys\n"
            "from testbed.ui import cli, progress\n"
            "cli.main(['doctor'], ops=cli.Ops(doctor=lambda: []))\n"
            "root = logging.getLogger()\n"
            "from rich.logging import RichHandler\n"
            "(h,) = root.handlers\n"
            "assert isinstance(h, RichHandler) and h.console is progress.ERR, root.handlers\n"
            "with progress.PhaseProgress('tb', 1) as p:\n"
            "    p('network', 'n')\n"
            "    logging.getLogger('testbed').warning('a warning line')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "a warning line" in r.stderr and "WARNING" in r.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", shell], ops=cli.Ops()) == 0
    script = capsys.readouterr().out
    assert "testbed" in script and "ssh-config" in script and "validate" in script
    if shell == "bash":
        r = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_run_json_prints_the_summary_and_results_capture_the_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_scenario_executor import World, make_ops, scenario

    monkeypatch.setenv("CXLTB_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "out"
    assert cli.main(["run", str(scenario(tmp_path)), "--out", str(out), "--json"], ops=make_ops(World())) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scenario"] == "fake" and data["ok"] is True and data["results"] == str(out)
    assert data["summary"] == json.loads((out / "summary.json").read_text())
    # The fake nodes have no console log and refuse dmesg: the folder says so instead of failing the run.
    for node in ("node0", "node1"):
        assert "not captured" in (out / "nodes" / node / "console.log").read_text()
        assert (out / "nodes" / node / "dmesg.txt").exists()
