"""`testbed validate FILE` and `--dry-run` for `up` and `run`, through the CLI: a dry run prints
the XML, the QEMU arguments, the plan and the schedule, and creates nothing (no state or cache
dir, no libvirt connection, no up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest

from testbed.artifacts.bootfiles import Kernel
from testbed.config.topology import KernelKind, Topology
from testbed.ui import cli
from testbed.ui.dryrun import Artifacts

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = "name: dry\nnodes: 2\nmhds:\n  - name: mhd0\n    size: 256M\n"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """State and cache dirs that must not come to exist, and a libvirt that must not be called."""
    monkeypatch.setenv("CXLTB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CXLTB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXLTB_SHM_DIR", str(tmp_path / "shm"))

    def no_libvirt(*args: Any) -> None:
        raise AssertionError("a dry run must not talk to libvirt")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(libvirt, "open", no_libvirt)
    monkeypatch.setattr(libvirt, "openAuth", no_libvirt)
    return tmp_path


def _no_side_effects() -> cli.Ops:
    def fail(*args: Any) -> Any:
        raise AssertionError("a dry run must not call this")

    return cli.Ops(up=fail, down=fail, known=fail, load_state=fail, connect=fail, agent=fail,
                   build_image=fail, build_kernel=fail, build_qemu=fail,
                   native_argv=lambda xml: (None, "libvirtd is not running (qemu:///system)"))


def _created(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name not in ("t.yaml",))


def test_up_dry_run_prints_xml_qemu_args_and_plan_and_creates_nothing(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = isolated / "t.yaml"
    f.write_text(TOPOLOGY)
    assert cli.main(["up", "--dry-run", "-f", str(f)], ops=_no_side_effects()) == 0
    text = capsys.readouterr().out
    assert text.count("<domain type=") == 2 and "<name>cxltb-dry_node1</name>" in text
    assert "-machine cxl=on" in text and "cxl-type3,bus=cxltb-rp0" in text
    assert "emulator: " in text and "virsh domxml-to-native" in text
    plan = text[text.index("## plan"):text.index("## node node0")]
    order = [plan.index(s) for s in ("state dir", "libvirt network cxltb-dry", "backing file", "domain cxltb-dry_node0",
                                     "domain cxltb-dry_node1")]
    assert order == sorted(order)
    assert "kernel mm-template is not built yet" in text
    assert _created(isolated) == []


def test_up_dry_run_uses_the_artifacts_the_cache_holds(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = isolated / "t.yaml"
    f.write_text(TOPOLOGY)
    seen: list[Topology] = []

    def locate(topo: Topology) -> Artifacts:
        seen.append(topo)
        return Artifacts(Kernel(KernelKind.MM_TEMPLATE, "6.12.9", Path("/k/mm")), Path("/q/bin/qemu"), ("a note",))

    ops = _no_side_effects()
    ops.locate_artifacts = locate
    assert cli.main(["up", "--dry-run", "-f", str(f)], ops=ops) == 0
    text = capsys.readouterr().out
    assert [t.name for t in seen] == ["dry"]
    assert "<kernel>/k/mm/vmlinuz</kernel>" in text and "<emulator>/q/bin/qemu</emulator>" in text
    assert "# note: a note" in text and "emulator: /q/bin/qemu" in text
    assert "(no full command line: libvirtd is not running (qemu:///system);" in text


# The start of what libvirt 11.3 answered for a two-node topology's node0 (virsh domxml-to-native).
NATIVE = ("LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
          "/var/cache/cxl-testbed/qemu/patched-3403b9e2e4e6/bin/qemu-system-x86_64 -name guest=cxltb-two-node_node0,"
          "debug-threads=on -S -machine pc-q35-10.0,usb=off,dump-guest-core=off,acpi=on -accel tcg "
          "-cpu max,hypervisor=off\n")


def test_up_dry_run_prints_libvirts_full_command_line(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = isolated / "t.yaml"
    f.write_text(TOPOLOGY)
    asked: list[str] = []

    def native(xml: str) -> tuple[str | None, str]:
        asked.append(xml)
        return NATIVE, ""

    ops = _no_side_effects()
    ops.native_argv = native
    assert cli.main(["up", "--dry-run", "-f", str(f)], ops=ops) == 0
    text = capsys.readouterr().out
    assert len(asked) == 2 and "<name>cxltb-dry_node1</name>" in asked[1]  # each node's own XML
    assert text.count("full command line (libvirt's domxml-to-native") == 2
    assert "-accel tcg -cpu max,hypervisor=off" in text and "(no full command line" not in text
    assert _created(isolated) == []


def test_run_dry_run_prints_the_schedule_and_runs_nothing(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--dry-run", str(REPO / "scenarios/smoke.yaml"), "--set", "repetitions=2"],
                    ops=_no_side_effects()) == 0
    text = capsys.readouterr().out
    assert "## schedule of scenario smoke: 2 repetition(s) x 2 mode(s) x 7 workload(s)" in text
    units = [line for line in text.splitlines() if line.startswith("unit ")]
    assert len(units) == 28
    assert units[0].startswith("unit 1: node0 · json · rep 1/2 (exec): 6 invocations + 1 warm-up")
    assert units[-1].startswith("unit 28: node1 · instances[instances=4] · rep 2/2")
    assert "setup: write-token (exec on node0)" in text and "<domain type=" in text
    assert _created(isolated) == []  # no results folder either: the fixture runs in isolated


def test_validate_tells_a_topology_from_a_scenario(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = isolated / "t.yaml"
    f.write_text(TOPOLOGY)
    assert cli.main(["validate", str(f)], ops=_no_side_effects()) == 0
    assert capsys.readouterr().out.startswith(f"{f}: topology dry: valid; 2 node(s) (node0, node1), mhd0 256 MiB")
    scn = REPO / "scenarios/smoke.yaml"
    assert cli.main(["validate", str(scn)], ops=_no_side_effects()) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{scn}: scenario smoke: valid; testbed two-node") and "14 unit(s)" in out


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nnodes: -1\n", ":2: nodes.count: must be between 1 and 16"),
    ("name: s\ntestbed: {name: s, nodes: 1}\nworkloads: 3\n", ":3: workloads"),
    ("name: [\n", "t.yaml"),
])
def test_validate_errors_are_one_line_and_exit_2(isolated: Path, capsys: pytest.CaptureFixture[str],
                                                 text: str, message: str) -> None:
    f = isolated / "t.yaml"
    f.write_text(text)
    assert cli.main(["validate", str(f)], ops=_no_side_effects()) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: error: ") and message in err and err.count("\n") == 1


def test_validate_a_missing_file(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(isolated / "nope.yaml")], ops=_no_side_effects()) == 2
    assert "cannot read" in capsys.readouterr().err
