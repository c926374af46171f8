"""The real 2-node testbed under libvirt/QEMU: CXL set-up, sharing across heads, exec, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.config.topology import load
from testbed.lifecycle import names, provision, sharing
from testbed.lifecycle.testbed import Testbed

from .leftovers import assert_clean

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.topology(str(REPO / "testbeds" / "two-node.yaml"))


def test_every_node_has_a_devdax_region_on_the_mhd(testbed: Testbed) -> None:
    for node in testbed.nodes:
        info = json.loads(node.run(["tbagent", "info"]).stdout)
        (dev,) = info["cxl"]
        assert dev["mhd"] == "mhd0" and dev["path"] == "/dev/mhd/mhd0"
        assert int(dev["size"], 16) == 512 << 20
        assert dev["dax"].startswith("/dev/dax")
        mode = node.run(["daxctl", "list", "-d", dev["dax"].removeprefix("/dev/")]).stdout
        assert '"mode":"devdax"' in mode.replace(" ", "")
        region = node.run(["cat", f"/sys/bus/cxl/devices/{dev['region']}/commit"]).stdout.strip()
        assert region == "1"


def test_heads_see_the_same_bytes_and_the_host_file_holds_them(testbed: Testbed) -> None:
    (result,) = sharing.prove(testbed)
    assert result.ok, result
    # And the other way round, from node1 to node0, at a fixed offset near the end.
    off = (512 << 20) - 4096
    testbed.exec("node1", "tbagent", "dax", "write", "mhd0", str(off), "c0ffee00c0ffee00")
    assert testbed.exec("node0", "tbagent", "dax", "read", "mhd0", str(off), "8").stdout.strip() == "c0ffee00c0ffee00"
    with open(names.shm_file(testbed.name, testbed.topology.mhds[0]), "rb") as fh:
        fh.seek(off)
        assert fh.read(8).hex() == "c0ffee00c0ffee00"


def test_nodes_reach_each_other_on_the_isolated_network(testbed: Testbed) -> None:
    code = "import socket; s = socket.create_connection(('node1', 22), timeout=5); print(s.recv(7).decode())"
    assert testbed.exec("node0", "python3", "-c", code).stdout.strip() == "SSH-2.0"
    # No default route: nothing leaves the testbed.
    assert "default" not in testbed.exec("node0", "ip", "route").stdout


def test_ssh_is_key_only_and_loopback_only(testbed: Testbed) -> None:
    cfg = testbed.exec("node0", "sshd", "-T").stdout
    assert "passwordauthentication no" in cfg and "permitrootlogin without-password" in cfg
    key = names.Layout(testbed.name).client_key
    assert key.stat().st_mode & 0o777 == 0o600
    listen = testbed.host.run(["ss", "-Htln"]).stdout
    port = testbed.state.nodes["node0"].ssh_port
    lines = [ln for ln in listen.splitlines() if f":{port} " in ln]
    assert lines and all("127.0.0.1:" in ln for ln in lines), lines


def test_cli_exec_status_and_idempotent_up(testbed: Testbed) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    run = [sys.executable, "-m", "testbed"]
    p = subprocess.run([*run, "exec", "-t", testbed.name, "all", "--", "uname", "-r"], capture_output=True,
                       text=True, env=env, cwd=REPO, check=False)
    assert p.returncode == 0, p.stderr
    assert len([ln for ln in p.stdout.splitlines() if ln.endswith(f"| {testbed.state.kernel['release']}")]) == 2
    p = subprocess.run([*run, "exec", "-t", testbed.name, "all", "--", "sh", "-c", "test $(hostname) = node0"],
                       capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert p.returncode == 1 and "node1: exit code 1" in p.stderr
    p = subprocess.run([*run, "status", "--json", testbed.name], capture_output=True, text=True, env=env, cwd=REPO,
                       check=True)
    (tb,) = json.loads(p.stdout)
    for node in tb["nodes"]:
        assert node["state"] == "running"
        assert node["ssh"]["host"] == "127.0.0.1"
        (dev,) = node["cxl"]
        assert dev["mhd"] == "mhd0" and dev["serial"].startswith("0xc1") and dev["region"].startswith("region")
    serials = {n["cxl"][0]["serial"] for n in tb["nodes"]}
    assert len(serials) == 2  # one head each
    again, created = provision.up(load(testbed.topology.source))
    assert not created and again.nodes["node0"].ssh_port == testbed.state.nodes["node0"].ssh_port


def test_cli_ssh_command_ssh_config_cp_and_exec_stdin(testbed: Testbed, tmp_path: Path) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    run = [sys.executable, "-m", "testbed"]

    def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run, *argv], input=stdin, capture_output=True, text=True, env=env, cwd=REPO,
                              check=False, timeout=120, stdin=None if stdin is not None else subprocess.DEVNULL)

    p = cli("ssh", "-t", testbed.name, "node1", "--", "echo", "a  b", "$HOSTNAME")
    assert p.returncode == 0 and p.stdout == "a  b $HOSTNAME\n", p.stderr  # each word arrives as one, unexpanded
    p = cli("ssh-config", "-t", testbed.name)
    assert p.returncode == 0, p.stderr
    cfg = tmp_path / "ssh_config"
    cfg.write_text(p.stdout)
    p = subprocess.run(["ssh", "-F", str(cfg), "node0", "hostname"], capture_output=True, text=True, timeout=60,
                       check=False, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and p.stdout.strip() == "node0", p.stderr
    src = tmp_path / "payload.txt"
    src.write_text("cxl payload\n")
    p = cli("cp", "-t", testbed.name, str(src), "node1:/tmp/")
    assert p.returncode == 0, p.stderr
    assert testbed.node("node1").run(["cat", "/tmp/payload.txt"]).stdout == "cxl payload\n"
    back = tmp_path / "back"
    back.mkdir()
    p = cli("cp", "-t", testbed.name, "node1:/tmp/payload.txt", str(back))
    assert p.returncode == 0 and (back / "payload.txt").read_text() == "cxl payload\n", p.stderr
    p = cli("exec", "-t", testbed.name, "node0", "--", "tr", "a-z", "A-Z", stdin="hi there\n")
    assert p.returncode == 0 and p.stdout == "HI THERE\n", p.stderr
    p = cli("exec", "-t", testbed.name, "all", "--", "cat", stdin="x\n")
    assert p.returncode == 0 and sorted(p.stdout.splitlines()) == ["node0 | x", "node1 | x"], p.stderr


def test_down_removes_everything(testbed: Testbed) -> None:
    testbed.close()
    provision.down(testbed.name)
    assert_clean(testbed.name)
