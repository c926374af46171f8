"""Golden files for the generated domain XML and QEMU arguments. UPDATE_GOLDEN=1 rewrites them
(and compares nothing in that run: run again without it to check)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from testbed.artifacts.kernel import Kernel
from testbed.config.topology import Accel, HostFacts, KernelKind, load
from testbed.lifecycle import names, render

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
HOST = HostFacts(mem_available=64 << 30, cpus=8)
KERNEL = Kernel(KernelKind.DEBIAN, "6.12.95+deb12-amd64", Path("/cache/kernels/debian-0123456789ab"))
EMULATOR = Path("/cache/qemu/patched-0123456789ab/bin/qemu-system-x86_64")
CASES = [("two-node", "node0", Accel.TCG), ("two-node", "node1", Accel.KVM), ("four-node", "node2", Accel.TCG),
         ("two-node-mmio", "node0", Accel.TCG), ("two-node-debian-qemu", "node1", Accel.TCG),
         ("dev-knobs", "node0", Accel.TCG), ("dev-knobs", "node1", Accel.TCG), ("two-node-ssd", "node0", Accel.TCG)]
GDB_PORT = 41234  # what provision allocates for a node with `debug: gdb`


@pytest.fixture(autouse=True)
def fixed_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXLTB_STATE_DIR", "/state")
    monkeypatch.setenv("CXLTB_SHM_DIR", "/dev/shm")


def _check(name: str, text: str, golden: Path = GOLDEN, update: bool | None = None) -> None:
    """Compare `text` with its golden file; with UPDATE_GOLDEN=1 only write it. A run that
    writes proves nothing (it would compare the file with itself), so it says so as a skip."""
    path = golden / name
    if update if update is not None else bool(os.environ.get("UPDATE_GOLDEN")):
        path.write_text(text)
        pytest.skip(f"UPDATE_GOLDEN: wrote {path}; not compared in this run")
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def require_tool(tool: str, env: Mapping[str, str] | None = None) -> str:
    """The path of `tool`. Missing, it skips the test on a workstation, but fails it where the
    CI variable is set: CI must not go green on checks it never ran."""
    path = shutil.which(tool)
    if path is None:
        if (os.environ if env is None else env).get("CI"):
            pytest.fail(f"{tool} is not installed, and CI is set: install it (Debian: libvirt-clients)")
        pytest.skip(f"{tool} not installed")
    return path


def test_update_golden_only_writes_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("old\n")
    with pytest.raises(pytest.skip.Exception, match="wrote"):
        _check("a.xml", "new\n", tmp_path, update=True)
    assert (tmp_path / "a.xml").read_text() == "new\n"
    _check("a.xml", "new\n", tmp_path, update=False)
    with pytest.raises(AssertionError, match="differs"):
        _check("a.xml", "newer\n", tmp_path, update=False)


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere() -> None:
    outcome: BaseException | None = None
    try:  # not pytest.raises: a skip escaping it would report this test as skipped, not failed
        require_tool("cxltb-no-such-tool", {"CI": "true"})
    except BaseException as exc:
        outcome = exc
    assert isinstance(outcome, pytest.fail.Exception) and "CI is set" in str(outcome), repr(outcome)
    with pytest.raises(pytest.skip.Exception):
        require_tool("cxltb-no-such-tool", {})
    assert require_tool("sh", {"CI": "true"}).endswith("/sh")


@pytest.mark.parametrize(("tb", "node", "accel"), CASES)
def test_domain_xml_golden(tb: str, node: str, accel: Accel) -> None:
    topo = load(REPO / "testbeds" / f"{tb}.yaml", HOST)
    xml = render.domain_xml(topo, topo.node(node), accel=accel, kernel=KERNEL, emulator=EMULATOR, ssh_port=40022,
                            layout=names.Layout(topo.name), gdb_port=GDB_PORT if topo.node(node).debug else 0)
    _check(f"{tb}.{node}.{accel}.xml", xml)


@pytest.mark.parametrize(("tb", "node", "accel"), CASES)
def test_qemu_args_golden(tb: str, node: str, accel: Accel) -> None:
    topo = load(REPO / "testbeds" / f"{tb}.yaml", HOST)
    args = render.qemu_args(topo, topo.node(node), 40022, names.Layout(topo.name),
                            GDB_PORT if topo.node(node).debug else 0)
    _check(f"{tb}.{node}.qemu-args.txt", "\n".join(args) + "\n")


@pytest.mark.parametrize(("tb", "node", "accel"), CASES)
def test_domain_xml_validates(tb: str, node: str, accel: Accel) -> None:
    validate = require_tool("virt-xml-validate")
    path = GOLDEN / f"{tb}.{node}.{accel}.xml"
    p = subprocess.run([validate, str(path), "domain"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_network_xml_is_isolated() -> None:
    xml = render.network_xml("two-node")
    assert "<forward" not in xml and "<ip" not in xml


def test_network_xml_validates(tmp_path: Path) -> None:
    (tmp_path / "net.xml").write_text(render.network_xml("two-node"))
    p = subprocess.run([require_tool("virt-xml-validate"), str(tmp_path / "net.xml"), "network"], capture_output=True,
                       text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_heads_get_distinct_serials_and_the_same_backing_file() -> None:
    topo = load(REPO / "testbeds" / "four-node.yaml", HOST)
    layout = names.Layout(topo.name)
    devs: dict[str, set[str]] = {}
    for node in topo.nodes:
        args = render.qemu_args(topo, node, 1, layout)
        for a in args:
            if a.startswith("cxl-type3"):
                devs.setdefault("sn", set()).add(a.split("sn=")[1] + node.name)
            if a.startswith("memory-backend-file"):
                devs.setdefault(node.name, set()).add(a.split("mem-path=")[1].split(",")[0])
    assert devs["node0"] == {"/dev/shm/cxltb-four-node_mhd-a"}
    assert devs["node2"] == {"/dev/shm/cxltb-four-node_mhd-a", "/dev/shm/cxltb-four-node_mhd-b"}
    assert len({s[:-5] for s in devs["sn"]}) == 5  # 3 heads on mhd-a + 2 on mhd-b, all distinct


def test_forwarded_port_binds_loopback_only() -> None:
    topo = load(REPO / "testbeds" / "two-node.yaml", HOST)
    args = render.qemu_args(topo, topo.nodes[0], 40022, names.Layout(topo.name))
    netdev = args[args.index("-netdev") + 1]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev and "restrict=on" in netdev


def test_node_env_is_shell_safe() -> None:
    topo = load(REPO / "testbeds" / "four-node.yaml", HOST)
    env = render.node_env(topo, topo.node("node2"))
    assert "MHDS='0xc1000002:mhd-a:3 0xc1000100:mhd-b:2'" in env
    for line in env.splitlines():
        key, _, value = line.partition("=")
        assert (key.isupper() and not any(c in value for c in '"`$\\;&|<>')) or key == "HOSTS_LINES"


@pytest.mark.parametrize(("tb", "want"), [("two-node", ",direct-map=on"), ("two-node-mmio", ",direct-map=off"),
                                          ("two-node-debian-qemu", "")])
def test_cxl_path_switch_reaches_the_type3_device(tb: str, want: str) -> None:
    """The topology's path becomes the patched device's direct-map property; Debian's QEMU,
    which has no such property, gets none (it would refuse to start)."""
    topo = load(REPO / "testbeds" / f"{tb}.yaml", HOST)
    (dev,) = [a for a in render.qemu_args(topo, topo.nodes[0], 1, names.Layout(topo.name)) if a.startswith("cxl-type3")]
    assert dev.endswith(want) and ("direct-map" in dev) == bool(want)
