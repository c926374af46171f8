"""Non-root gets one line naming what needs root (exit 2), and host device permissions change
only in `testbed setup`, which says what it changes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.lifecycle import daemons, hostsetup, locks
from testbed.ui import cli, doctor

REPO = Path(__file__).resolve().parents[2]


def test_require_root_is_one_line_naming_the_action() -> None:
    hostsetup.require_root("x", "y", euid=0)
    with pytest.raises(hostsetup.NeedsRoot) as info:
        hostsetup.require_root("testbed up", "it creates libvirt domains", euid=1000)
    msg = str(info.value)
    assert msg.startswith("testbed up needs root: it creates libvirt domains") and "\n" not in msg
    assert info.value.exit_code == 2


def test_doctor_as_non_root_refuses_before_touching_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*_a: object) -> None:
        raise AssertionError("doctor touched the host as non-root")
    monkeypatch.setattr(daemons, "ensure_running", touched)
    monkeypatch.setattr(hostsetup, "apply", touched)
    with pytest.raises(hostsetup.NeedsRoot, match="testbed doctor needs root"):
        doctor.run_checks(euid=1000)


def test_doctor_only_reports_what_setup_would_change(monkeypatch: pytest.MonkeyPatch) -> None:
    change = hostsetup.Change(Path("/dev/kvm"), "root:root 0600", "root:kvm 0660", "why")
    monkeypatch.setattr(hostsetup, "planned", lambda: [change])
    monkeypatch.setattr(hostsetup, "apply", lambda _c: pytest.fail("doctor applied a host change"))
    check = doctor.host_setup_check()
    assert not check.ok and "/dev/kvm: root:root 0600 -> root:kvm 0660" in check.detail
    assert "testbed setup" in check.fix


def test_libvirt_is_not_started_by_a_side_effect_on_dev_kvm() -> None:
    assert not hasattr(daemons, "fix_kvm_node")
    assert "chown" not in Path(daemons.__file__).read_text()


def test_kvm_node_change_detects_wrong_group_and_mode(tmp_path: Path) -> None:
    node = tmp_path / "kvm"
    node.write_text("")
    node.chmod(0o600)
    gid = os.stat(node).st_gid
    change = hostsetup.kvm_node_change(node, kvm_gid=gid)
    assert change is not None and change.before.endswith("0600") and change.after.endswith("0660")
    node.chmod(0o660)
    if os.stat(node).st_uid == 0:
        assert hostsetup.kvm_node_change(node, kvm_gid=gid) is None
    assert hostsetup.kvm_node_change(node, kvm_gid=gid + 1) is not None
    assert hostsetup.kvm_node_change(tmp_path / "absent", kvm_gid=gid) is None
    assert stat.S_IMODE(os.stat(node).st_mode) == 0o660  # looking changed nothing


def test_setup_says_each_change_before_making_it() -> None:
    said: list[str] = []
    applied: list[list[hostsetup.Change]] = []
    change = hostsetup.Change(Path("/dev/kvm"), "root:root 0600", "root:kvm 0660", "why")
    assert hostsetup.setup(said.append, euid=0, changes=[change], apply_changes=applied.append) == 0
    assert said == ["testbed setup: changing /dev/kvm: root:root 0600 -> root:kvm 0660 (why)"] and applied == [[change]]
    said.clear()
    hostsetup.setup(said.append, euid=0, changes=[], apply_changes=applied.append)
    assert "nothing to change" in said[0] and len(applied) == 1
    with pytest.raises(hostsetup.NeedsRoot):
        hostsetup.setup(said.append, euid=1000, changes=[change], apply_changes=applied.append)
    assert len(applied) == 1


def test_lock_on_a_root_owned_state_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXLTB_STATE_DIR", str(tmp_path))

    def denied(*_a: object, **_k: object) -> int:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(hostsetup.NeedsRoot, match=r"testbed up/down of tb needs root: .*locks"):
        with locks.testbed_lock("tb"):
            pass


def test_cli_prints_one_line_and_exits_2_when_not_root(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["setup"]) == 2
    err = capsys.readouterr().err.strip()
    assert "testbed setup needs root" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the CLI as a real non-root user, which needs root to arrange")
@pytest.mark.parametrize("argv", [["doctor"], ["up", "-f", str(REPO / "testbeds" / "two-node.yaml")], ["down", "two-node"]])
def test_a_real_non_root_user_gets_one_line_and_exit_2(argv: list[str]) -> None:
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "testbed",
                        *argv], cwd="/tmp", capture_output=True, text=True, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2, p.stdout + p.stderr
    assert "needs root" in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
