"""Interrupted and failed bring-ups roll back; four nodes on two MHDs share correctly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.config.topology import host_facts, load, renamed_topology
from testbed.lifecycle import names, provision, sharing
from testbed.lifecycle.testbed import Testbed

from .leftovers import assert_clean

REPO = Path(__file__).resolve().parents[2]


def _wait_for_domain(state_file: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"up ended early: {proc.communicate()}"
        try:
            if any(o["kind"] == "domain" for o in json.loads(state_file.read_text())["objects"]):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    pytest.fail("up never reached domain creation")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_up_rolls_back(tmp_path: Path, sig: signal.Signals) -> None:
    name = f"int{sig.value}-{os.getpid() % 1000}"
    topo = renamed_topology(REPO / "testbeds" / "two-node.yaml", name, tmp_path)
    # SIGINT back to its default, so the child's Python raises KeyboardInterrupt even where this
    # runner was started with SIGINT ignored (a background job of a non-interactive shell).
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", "-f", str(topo)], cwd=REPO, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_domain(names.Layout(name).state_file, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "rolled back" in err and "Traceback" not in err
        assert_clean(name)
    finally:
        if proc.poll() is None:
            proc.kill()
        provision.down(name)


def test_failed_boot_rolls_back(tmp_path: Path) -> None:
    name = f"fail-{os.getpid() % 1000}"
    topo = renamed_topology(REPO / "testbeds" / "one-node.yaml", name, tmp_path)
    env = dict(os.environ, CXLTB_BOOT_TIMEOUT="0.5")
    p = subprocess.run([sys.executable, "-m", "testbed", "up", "-f", str(topo)], cwd=REPO, text=True, env=env,
                       capture_output=True, timeout=300, check=False)
    try:
        assert p.returncode == 1, p.stderr
        assert "not ready after" in p.stderr and "Traceback" not in p.stderr
        assert_clean(name)
    finally:
        provision.down(name)


def test_down_after_a_crash_with_no_state_file(tmp_path: Path) -> None:
    name = f"crash-{os.getpid() % 1000}"
    topo = load(renamed_topology(REPO / "testbeds" / "one-node.yaml", name, tmp_path), host_facts())
    with Testbed.up(topo):  # and down again on leaving, should the test fail before its own
        names.Layout(name).state_file.unlink()  # as if the toolkit died and lost its record
        provision.down(name)
        assert_clean(name)


def test_four_nodes_two_mhds(tmp_path: Path) -> None:
    name = f"four-{os.getpid() % 1000}"
    topo = load(renamed_topology(REPO / "testbeds" / "four-node.yaml", name, tmp_path), host_facts())
    with Testbed.up(topo) as tb:
        results = sharing.prove(tb)
        assert {r.mhd for r in results} == {"mhd-a", "mhd-b"}
        assert all(r.ok for r in results), results
        assert set(results[0].readers) == {"node0", "node1", "node2"}
        assert set(results[1].readers) == {"node2", "node3"}
        # Different MHDs are different memory: a token on mhd-a is not on mhd-b.
        a = results[0]
        with open(names.shm_file(name, topo.mhds[1]), "rb") as fh:
            fh.seek(a.offset)
            assert fh.read(16).hex() != a.token
    assert_clean(name)


def test_hugetlbfs_backing(tmp_path: Path) -> None:
    mnt = Path("/dev/hugepages")
    mnt.mkdir(exist_ok=True)
    mounted = subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0
    if not mounted:
        subprocess.run(["mount", "-t", "hugetlbfs", "hugetlbfs", str(mnt)], check=True)
    nr = Path("/proc/sys/vm/nr_hugepages")
    before = nr.read_text()
    nr.write_text(str(int(before) + 260))  # 512 MiB of 2 MiB pages, plus slack
    name = f"huge-{os.getpid() % 1000}"
    src = tmp_path / "src.yaml"
    src.write_text("name: x\nnodes: 2\nmhds:\n  - name: mhd0\n    size: 512MiB\n    backing: hugetlbfs\n"
                   f"    hugetlbfs: {mnt}\n")
    topo = load(renamed_topology(src, name, tmp_path), host_facts())
    try:
        with Testbed.up(topo) as tb:
            assert names.shm_file(name, topo.mhds[0]).parent == mnt
            (result,) = sharing.prove(tb)
            assert result.ok, result
    finally:
        nr.write_text(before)
        if not mounted:
            subprocess.run(["umount", str(mnt)], check=False)
    assert_clean(name)
    assert not list(mnt.glob(f"cxltb-{name}_*"))


def _mm_template_vmlinuz() -> Path:
    found = sorted(Path("/var/cache/cxl-testbed/kernels").glob("mm-template-????????????/vmlinuz"))
    if not found:
        pytest.skip("no cached mm-template kernel (`testbed kernel build`)")
    return found[-1]


def _gdb_answers(port: int) -> bytes:
    """Ask QEMU's gdb stub why the guest stopped ('?'): any '$...#xx' packet is an answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"+$?#3f")
        data = b""
        while b"#" not in data:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        s.sendall(b"+$D#44")  # detach: the guest runs on
    return data


def test_own_kernel_path_append_and_gdb_stub(tmp_path: Path) -> None:
    """A node booted from an explicit bzImage path (no modules: what it has built in), with
    extra command-line arguments, extra QEMU arguments and a gdb stub on loopback."""
    vmlinuz = _mm_template_vmlinuz()
    name = f"own-{os.getpid() % 1000}"
    src = tmp_path / "src.yaml"
    src.write_text(f"name: x\nkernel: {vmlinuz}\nappend: cxltb.owntest=1\n"
                   "nodes:\n  - name: node0\n    debug: gdb\n    qemu_args: ['-d', 'guest_errors']\n"
                   "mhds:\n  - name: mhd0\n    size: 512MiB\n")
    topo = load(renamed_topology(src, name, tmp_path), host_facts())
    with Testbed.up(topo) as tb:
        assert tb.state.kernel["kind"] == "custom" and tb.state.kernel["release"] == "6.12.95"
        assert tb.exec("node0", "uname", "-r").stdout.strip() == tb.state.kernel["release"]
        assert "cxltb.owntest=1" in tb.exec("node0", "cat", "/proc/cmdline").stdout
        port = tb.state.nodes["node0"].gdb_port
        assert port and _gdb_answers(port).startswith(b"+$")
    assert_clean(name)


def test_dry_run_prints_libvirts_full_command_line_and_defines_nothing(tmp_path: Path) -> None:
    from testbed.lifecycle import daemons

    daemons.ensure_running()
    topo = renamed_topology(REPO / "testbeds" / "two-node.yaml", f"dry-{os.getpid() % 1000}", tmp_path)
    name = load(topo, host_facts()).name
    r = subprocess.run([sys.executable, "-m", "testbed", "up", "--dry-run", "-f", str(topo)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("full command line (libvirt's domxml-to-native") == 2, r.stdout[-2000:]
    assert f"-name guest=cxltb-{name}_node0" in r.stdout and "cxl-type3" in r.stdout
    assert_clean(name)  # no domain, network, backing file or state
