from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.config.topology import Accel, Backing, CxlPath, HostFacts, KernelKind, QemuKind, load
from testbed.config.yamlfile import Size
from testbed.errors import ConfigError
from testbed.ui import cli

REPO = Path(__file__).resolve().parents[2]
BIG_HOST = HostFacts(mem_available=64 << 30, cpus=8)


@pytest.mark.parametrize("name", ["one-node", "two-node", "four-node"])
def test_shipped_topologies_parse(name: str) -> None:
    topo = load(REPO / "testbeds" / f"{name}.yaml", BIG_HOST)
    assert topo.name == name
    assert topo.mhds


def test_two_node_defaults() -> None:
    topo = load(REPO / "testbeds" / "two-node.yaml", BIG_HOST)
    assert [n.name for n in topo.nodes] == ["node0", "node1"]
    assert topo.nodes[1].address == "10.213.0.11/24"
    assert topo.accelerator is Accel.AUTO and topo.kernel is KernelKind.MM_TEMPLATE
    (mhd,) = topo.mhds
    assert mhd.heads == ("node0", "node1") and mhd.size == 512 << 20 and mhd.backing is Backing.SHM
    assert topo.qemu is QemuKind.PATCHED and mhd.path is CxlPath.DIRECT


@pytest.mark.parametrize(("name", "qemu", "path"), [("two-node-mmio", QemuKind.PATCHED, CxlPath.MMIO),
                                                    ("two-node-debian-qemu", QemuKind.DEBIAN, CxlPath.MMIO)])
def test_shipped_mmio_topologies(name: str, qemu: QemuKind, path: CxlPath) -> None:
    topo = load(REPO / "testbeds" / f"{name}.yaml", BIG_HOST)
    assert topo.qemu is qemu and [m.path for m in topo.mhds] == [path]


def test_four_node_has_a_node_on_both_mhds() -> None:
    topo = load(REPO / "testbeds" / "four-node.yaml", BIG_HOST)
    assert [m.name for m in topo.mhds_of("node2")] == ["mhd-a", "mhd-b"]
    assert [m.name for m in topo.mhds_of("node3")] == ["mhd-b"]


def test_sizes() -> None:
    assert Size.parse("512MiB") == 512 << 20
    assert Size.parse("4G") == 4 << 30
    assert Size.parse(1024) == 1024
    with pytest.raises(ValueError):
        Size.parse("lots")


BASE = """\
name: t
nodes:
  - name: a
  - name: b
mhds:
  - name: m
    size: 512MiB
    heads: [a, b]
"""

# (description, yaml text, expected line, expected field, message fragment)
BAD = [
    ("unknown top-level key", BASE + "colour: blue\n", 9, "colour", "unknown key"),
    ("unknown node key", BASE.replace("  - name: b\n", "  - name: b\n    cpus: 2\n"), 5, "nodes[1].cpus", "unknown key"),
    ("head names unknown node", BASE.replace("[a, b]", "[a, c]"), 8, "mhds[0].heads[1]", "unknown node 'c'"),
    ("duplicate node", BASE.replace("name: b", "name: a"), 4, "nodes[1].name", "duplicate node name"),
    ("duplicate mhd", BASE + "  - name: m\n    size: 256MiB\n", 9, "mhds[1].name", "duplicate MHD name"),
    ("size not 256MiB multiple", BASE.replace("512MiB", "300MiB"), 7, "mhds[0].size", "multiple of 256MiB"),
    ("unsafe testbed name", BASE.replace("name: t", "name: ../etc"), 1, "name", "unsafe name"),
    ("xml-unsafe node name", BASE.replace("name: b", "name: \"b'><x\""), 4, "nodes[1].name", "unsafe node name"),
    ("bad accelerator", BASE + "accelerator: fast\n", 9, "accelerator", "one of auto, tcg, kvm"),
    ("bad kernel", BASE + "kernel: mine\n", 9, "kernel", "one of debian, mm-template"),
    ("window smaller than size", BASE + "    window: 256MiB\n", 9, "mhds[0].window", "at least the size"),
    ("public subnet", BASE + "network:\n  subnet: 8.8.8.0/24\n", 10, "network.subnet", "private IPv4"),
    ("too much memory", BASE.replace("  - name: a\n", "  - name: a\n    memory: 512GiB\n"), 2, "nodes", "host memory"),
    ("missing name", BASE.replace("name: t\n", ""), 1, "", "missing required key 'name'"),
    ("nodes not a list", BASE.replace("nodes:\n  - name: a\n  - name: b\n", "nodes: lots\n"), 2, "nodes", "expected a count"),
    ("vcpus wrong type", BASE.replace("  - name: a\n", "  - name: a\n    vcpus: two\n"), 4, "nodes[0].vcpus", "expected an integer"),
    ("disk throttle zero", BASE.replace("  - name: a\n", "  - name: a\n    disk_read_mbps: 0\n"), 4,
     "nodes[0].disk_read_mbps", "must be between 1 and 100000, got 0"),
    ("invalid yaml", "name: [t\n", 2, "", "invalid YAML"),
    ("bad qemu", BASE + "qemu: mine\n", 9, "qemu", "one of patched, debian"),
    ("bad cxl path", BASE + "    path: fast\n", 9, "mhds[0].path", "one of direct, mmio"),
    ("direct path on debian qemu", "qemu: debian\n" + BASE, 7, "mhds[0].path", "direct needs `qemu: patched`"),
    ("kernel path missing", BASE + "kernel: /no/such/bzImage\n", 9, "kernel", "no such file"),
    ("kernel: custom is not a kind", BASE + "kernel: custom\n", 9, "kernel", "path of a bzImage"),
    ("modules without a kernel path", BASE + "modules: /tmp\n", 9, "modules", "only with `kernel: /path"),
    ("append with a newline", BASE + "append: \"a\\nb\"\n", 9, "append", "one line"),
    ("append not a string", BASE + "append: [a]\n", 9, "append", "expected a string"),
    ("qemu_args not a list", BASE.replace("  - name: a\n", "  - name: a\n    qemu_args: -s\n"), 4,
     "nodes[0].qemu_args", "expected a list"),
    ("qemu_args item not a string", BASE.replace("  - name: a\n", "  - name: a\n    qemu_args: [1]\n"), 4,
     "nodes[0].qemu_args[0]", "expected a string"),
    ("qemu_args control character", BASE.replace("  - name: a\n", "  - name: a\n    qemu_args: [\"a\\tb\"]\n"), 4,
     "nodes[0].qemu_args[0]", "printable"),
    ("qemu_args empty item", BASE.replace("  - name: a\n", "  - name: a\n    qemu_args: ['']\n"), 4,
     "nodes[0].qemu_args[0]", "empty"),
    ("bad debug", BASE.replace("  - name: a\n", "  - name: a\n    debug: lldb\n"), 4, "nodes[0].debug", "one of gdb"),
]


@pytest.mark.parametrize(("desc", "text", "line", "field", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_invalid_topology_names_file_line_field(desc: str, text: str, line: int, field: str, fragment: str,
                                                tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, BIG_HOST)
    err = info.value
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    assert fragment in err.message, str(err)
    assert str(err).startswith(f"{path}:{line}: ")


def test_cli_reports_invalid_topology_in_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("[a, b]", "[a, zz]"))
    ops = cli.Ops(host_facts=lambda: BIG_HOST, up=lambda *a: pytest.fail("up must not run"))
    assert cli.main(["up", "-f", str(path)], ops=ops) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"testbed: error: {path}:8: mhds[0].heads[1]: unknown node 'zz' (nodes: a, b)"]


def test_cli_subprocess_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + "colour: blue\n")
    p = subprocess.run([sys.executable, "-m", "testbed", "up", "-f", str(path)], capture_output=True, text=True,
                       cwd=REPO, check=False)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and "bad.yaml:9: colour: unknown key" in p.stderr


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml")
