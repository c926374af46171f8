"""Pure rendering of libvirt XML and the QEMU arguments for CXL (golden-tested)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from testbed.artifacts.kernel import Kernel
from testbed.config.topology import Accel, CxlPath, Debug, NodeConfig, QemuKind, Topology
from testbed.lifecycle import names

# no_timer_check: under TCG on a loaded host a vCPU can be starved through the kernel's IO-APIC
# timer check, which then panics ("IO-APIC + timer doesn't work!"): seen booting four nodes on
# two busy cores. The check guards real broken chipsets, not QEMU's.
CMDLINE = "console=ttyS0 loglevel=4 panic=-1 mitigations=off no_timer_check"
CTL_PCI_SLOT = 0x10  # below 0x1f (ICH9) and above libvirt's own root ports in slot 1
CXL_PCI_SLOT = 0x11
CXL_BUS_BASE = 0x40
CXL_BUS_STRIDE = 0x10
SEED_FILES = ("node.env", "authorized_keys", "ssh_host_ed25519_key")


@dataclass(frozen=True)
class AccelProfile:
    domain_type: str
    cpu_mode: str


ACCELS = {
    Accel.TCG: AccelProfile("qemu", "maximum"),
    Accel.KVM: AccelProfile("kvm", "host-passthrough"),
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("testbed", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("xml", "j2"), default=True),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def device_id(k: int) -> str:
    """QOM id of a node's k-th CXL Type-3 device (its k-th MHD head); QMP reads it back."""
    return f"cxltb-vmem{k}"


def cmdline(topo: Topology) -> str:
    return f"{CMDLINE} {topo.append}" if topo.append else CMDLINE


def qemu_args(topo: Topology, node: NodeConfig, ssh_port: int, layout: names.Layout, gdb_port: int = 0) -> list[str]:
    """The CXL devices and the control network, then the gdb stub (loopback only) and the
    node's own `qemu_args:`, last so that they can add to what the testbed set."""
    args = ["-machine", "cxl=on"]
    args += ["-netdev", f"user,id=tbctl,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"]
    args += ["-device", f"virtio-net-pci,netdev=tbctl,mac={names.mac(topo.name, node.name, 'ctl')},"
             f"romfile=,bus=pcie.0,addr={CTL_PCI_SLOT:#x}"]
    for seed in SEED_FILES:
        args += ["-fw_cfg", f"name=opt/cxltb/{seed},file={layout.seed(node.name, seed)}"]
    fmw: list[str] = []
    for k, mhd in enumerate(topo.mhds_of(node.name)):
        head = mhd.heads.index(node.name)
        args += ["-object", f"memory-backend-file,id=cxltb-mem{k},share=on,"
                 f"mem-path={names.shm_file(topo.name, mhd)},size={mhd.size}"]
        args += ["-device", f"pxb-cxl,bus_nr={CXL_BUS_BASE + k * CXL_BUS_STRIDE},bus=pcie.0,"
                 f"id=cxl.{k},addr={CXL_PCI_SLOT + k:#x}"]
        args += ["-device", f"cxl-rp,port=0,bus=cxl.{k},id=cxltb-rp{k},chassis={100 + k},slot=0"]
        # Debian's QEMU has no direct-map property: it only has the MMIO path.
        direct = "" if topo.qemu is QemuKind.DEBIAN else f",direct-map={'on' if mhd.path is CxlPath.DIRECT else 'off'}"
        args += ["-device", f"cxl-type3,bus=cxltb-rp{k},volatile-memdev=cxltb-mem{k},"
                 f"id={device_id(k)},sn={names.serial(mhd.index, head)}{direct}"]
        fmw.append(f"cxl-fmw.{k}.targets.0=cxl.{k},cxl-fmw.{k}.size={mhd.window}")
    if fmw:
        args += ["-M", ",".join(fmw)]
    if node.debug is Debug.GDB:
        # `up` always passes the free port it allocated; 0 is the dry run's placeholder, as for ssh.
        args += ["-gdb", f"tcp:127.0.0.1:{gdb_port}"]
    return args + list(node.qemu_args)


def node_env(topo: Topology, node: NodeConfig) -> str:
    """The node's configuration, sourced by the guest's init; every value is validated."""
    hosts = ";".join(f"{n.address.split('/')[0]} {n.name}" for n in topo.nodes)
    mhds = " ".join(f"{names.serial(m.index, m.heads.index(node.name)):#x}:{m.name}:{len(m.heads)}"
                    for m in topo.mhds_of(node.name))
    return (f"NODE={node.name}\nTESTBED={topo.name}\n"
            f"CTL_MAC={names.mac(topo.name, node.name, 'ctl')}\n"
            f"DATA_MAC={names.mac(topo.name, node.name, 'data')}\n"
            f"DATA_IP={node.address}\nHOSTS_LINES='{hosts}'\nMHDS='{mhds}'\n")


def domain_xml(topo: Topology, node: NodeConfig, *, accel: Accel, kernel: Kernel, emulator: Path, ssh_port: int,
               layout: names.Layout, gdb_port: int = 0) -> str:
    maxmem = node.memory + sum(m.window for m in topo.mhds_of(node.name))
    return _env.get_template("domain.xml.j2").render(
        accel=ACCELS[accel],
        domain=names.domain(topo.name, node.name),
        testbed=topo.name,
        node=node,
        memory_mib=node.memory >> 20,
        read_bytes_sec=node.disk_read_mbps * 1_000_000 if node.disk_read_mbps else None,
        maxmem_mib=max(maxmem, 2 * node.memory) >> 20,
        kernel=kernel,
        cmdline=cmdline(topo),
        emulator=emulator,
        overlay=layout.overlay(node.name),
        network=names.network(topo.name),
        data_mac=names.mac(topo.name, node.name, "data"),
        console=layout.console(node.name),
        qemu_args=qemu_args(topo, node, ssh_port, layout, gdb_port),
    )


def network_xml(testbed: str) -> str:
    # Isolated and host-only: no forward element and no host address, so nothing is routed.
    return _env.get_template("network.xml.j2").render(
        name=names.network(testbed), bridge=names.bridge(testbed))
