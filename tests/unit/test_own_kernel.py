"""`kernel: /path/to/bzImage`, `modules:`, `append:`, per-node `qemu_args:` and `debug: gdb`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.artifacts import ownkernel
from testbed.config.topology import Debug, HostFacts, KernelKind, Topology, load
from testbed.errors import UserError
from testbed.lifecycle import names, render
from testbed.lifecycle import state as st

HOST = HostFacts(mem_available=64 << 30, cpus=8)
BASE = "name: t\nnodes:\n  - name: a\nmhds:\n  - name: m\n    size: 512MiB\n"


def load_text(tmp_path: Path, text: str) -> Topology:
    (tmp_path / "other.yaml").write_text(text)
    return load(tmp_path / "other.yaml", HOST)


def fake_bzimage(path: Path, version: bytes = b"6.13.0-rc1-mine (me@box) #1 SMP") -> Path:
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    at = 0x400
    head[0x20E:0x210] = (at - 0x200).to_bytes(2, "little")
    head[at:at + len(version) + 1] = version + b"\0"
    path.write_bytes(bytes(head))
    return path


def test_kernel_path_relative_to_the_topology_file(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    fake_bzimage(tmp_path / "k" / "bzImage")
    (tmp_path / "mods" / "lib" / "modules" / "6.13.0-rc1-mine").mkdir(parents=True)
    (tmp_path / "t.yaml").write_text(BASE + "kernel: k/bzImage\nmodules: mods\nappend: nokaslr\n")
    topo = load(tmp_path / "t.yaml", HOST)
    assert topo.kernel is KernelKind.CUSTOM
    assert topo.kernel_path == str(tmp_path / "k" / "bzImage") and topo.modules == str(tmp_path / "mods")
    assert render.cmdline(topo).endswith("mitigations=off no_timer_check nokaslr")


def test_modules_dir_needs_lib_modules(tmp_path: Path) -> None:
    fake_bzimage(tmp_path / "bzImage")
    (tmp_path / "mods").mkdir()
    (tmp_path / "t.yaml").write_text(BASE + f"kernel: {tmp_path}/bzImage\nmodules: mods\n")
    with pytest.raises(UserError, match="no lib/modules inside"):
        load(tmp_path / "t.yaml", HOST)


def test_a_kind_still_parses_as_a_kind(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(BASE + "kernel: debian\n")
    topo = load(tmp_path / "t.yaml", HOST)
    assert topo.kernel is KernelKind.DEBIAN and topo.kernel_path == "" and render.cmdline(topo) == render.CMDLINE


def test_bzimage_release_reads_the_boot_header(tmp_path: Path) -> None:
    assert ownkernel.bzimage_release(fake_bzimage(tmp_path / "bz")) == "6.13.0-rc1-mine"


@pytest.mark.parametrize("damage", ["magic", "pointer", "unterminated"])
def test_bzimage_release_refuses_a_damaged_header(tmp_path: Path, damage: str) -> None:
    data = bytearray(fake_bzimage(tmp_path / "bz").read_bytes())
    if damage == "magic":
        data[0x202:0x206] = b"MZMZ"
    elif damage == "pointer":
        data[0x20E:0x210] = (0xFF00).to_bytes(2, "little")
    else:
        data[0x400:] = b"x" * (len(data) - 0x400)
    (tmp_path / "bz").write_bytes(bytes(data))
    with pytest.raises(UserError):
        ownkernel.bzimage_release(tmp_path / "bz")


def test_modules_of_another_release_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXLTB_CACHE_DIR", str(tmp_path / "cache"))
    fake_bzimage(tmp_path / "bz")
    (tmp_path / "mods" / "lib" / "modules" / "6.1.0").mkdir(parents=True)
    with pytest.raises(UserError, match=r"built for 6\.1\.0"):
        ownkernel.resolve(tmp_path / "bz", tmp_path / "mods")


def test_without_modules_the_boot_modules_count_as_built_in(tmp_path: Path) -> None:
    from testbed.artifacts.bootfiles import BOOT_MODULES, module_closure
    stage = ownkernel.stage_without_modules(tmp_path, "6.13.0")
    assert module_closure(stage, "6.13.0", BOOT_MODULES) == []


def test_the_cache_key_follows_the_image_and_the_modules(tmp_path: Path) -> None:
    bz = fake_bzimage(tmp_path / "bz")
    mods = tmp_path / "mods" / "lib" / "modules" / "6.13.0-rc1-mine"
    mods.mkdir(parents=True)
    k0 = ownkernel.key(bz, None)
    k1 = ownkernel.key(bz, tmp_path / "mods")
    (mods / "x.ko").write_bytes(b"1")
    k2 = ownkernel.key(bz, tmp_path / "mods")
    fake_bzimage(bz, b"6.13.0-rc2 #2")
    assert len({k0, k1, k2, ownkernel.key(bz, None)}) == 4


def test_gdb_stub_binds_loopback_and_node_args_come_last(tmp_path: Path) -> None:
    text = BASE.replace("  - name: a\n", "  - name: a\n    debug: gdb\n    qemu_args: ['-s', '-d', 'int']\n")
    (tmp_path / "t.yaml").write_text(text)
    topo = load(tmp_path / "t.yaml", HOST)
    node = topo.node("a")
    assert node.debug is Debug.GDB
    args = render.qemu_args(topo, node, 40022, names.Layout("t"), gdb_port=41000)
    assert args[-5:] == ["-gdb", "tcp:127.0.0.1:41000", "-s", "-d", "int"]
    assert "tcp:127.0.0.1:0" in render.qemu_args(topo, node, 40022, names.Layout("t"))  # the dry run's placeholder
    other = load_text(tmp_path, BASE)
    assert "-gdb" not in render.qemu_args(other, other.node("a"), 40022, names.Layout("t"), gdb_port=41000)


def test_node_group_shares_qemu_args(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("name: t\nnodes:\n  count: 2\n  qemu_args: [-s]\n")
    topo = load(tmp_path / "t.yaml", HOST)
    assert [n.qemu_args for n in topo.nodes] == [("-s",), ("-s",)]


def test_gdb_port_survives_the_state_file_and_old_files_still_load() -> None:
    state = st.State("t", "f", "", "h", nodes={"a": st.NodeState("a", "cxltb-t_a", 1, "10.0.0.1/24", [], 4321)})
    back = st.State.from_json(json.loads(json.dumps(state.to_json())))
    assert back.nodes["a"].gdb_port == 4321
    old = state.to_json()
    del old["nodes"]["a"]["gdb_port"]
    assert st.State.from_json(old).nodes["a"].gdb_port == 0
    assert "127.0.0.1:4321" in st.gdb_line("a", 4321)
