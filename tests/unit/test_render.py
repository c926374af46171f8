"""Golden files for the generated domain XML and QEMU arguments. UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed import names, render
from testbed.kernel import Kernel
from testbed.topology import Accel, HostFacts, KernelKind, load

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
HOST = HostFacts(mem_available=64 << 30, cpus=8)
KERNEL = Kernel(KernelKind.DEBIAN, "6.12.95+deb12-amd64", Path("/cache/kernels/debian-0123456789ab"))
EMULATOR = Path("/cache/qemu/patched-0123456789ab/bin/qemu-system-x86_64")
CASES = [("two-node", "node0", Accel.TCG), ("two-node", "node1", Accel.KVM), ("four-node", "node2", Accel.TCG),
         ("two-node-mmio", "node0", Accel.TCG), ("two-node-debian-qemu", "node1", Accel.TCG)]


@pytest.fixture(autouse=True)
def fixed_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXLTB_STATE_DIR", "/state")
    monkeypatch.setenv("CXLTB_SHM_DIR", "/dev/shm")


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize(("tb", "node", "accel"), CASES)
def test_domain_xml_golden(tb: str, node: str, accel: Accel) -> None:
    topo = load(REPO / "testbeds" / f"{tb}.yaml", HOST)
    xml = render.domain_xml(topo, topo.node(node), accel=accel, kernel=KERNEL, emulator=EMULATOR, ssh_port=40022,
                            layout=names.Layout(topo.name))
    _check(f"{tb}.{node}.{accel}.xml", xml)


@pytest.mark.parametrize(("tb", "node", "accel"), CASES)
def test_qemu_args_golden(tb: str, node: str, accel: Accel) -> None:
    topo = load(REPO / "testbeds" / f"{tb}.yaml", HOST)
    args = render.qemu_args(topo, topo.node(node), 40022, names.Layout(topo.name))
    _check(f"{tb}.{node}.qemu-args.txt", "\n".join(args) + "\n")


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate not installed")
@pytest.mark.parametrize(("tb", "node", "accel"), CASES)
def test_domain_xml_validates(tb: str, node: str, accel: Accel) -> None:
    path = GOLDEN / f"{tb}.{node}.{accel}.xml"
    p = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_network_xml_is_isolated(tmp_path: Path) -> None:
    xml = render.network_xml("two-node")
    assert "<forward" not in xml and "<ip" not in xml
    (tmp_path / "net.xml").write_text(xml)
    if shutil.which("virt-xml-validate"):
        p = subprocess.run(["virt-xml-validate", str(tmp_path / "net.xml"), "network"], capture_output=True,
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
