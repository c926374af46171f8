"""Topology files: YAML to frozen dataclasses, validated before anything is created."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml
from tbproto import meminfo
from tbproto.jsontypes import JsonObject

from testbed import paths
from testbed.config.yamlfile import Document, KeyPath, Size, Yaml, convert, from_mapping, load_document

MiB = 1 << 20
GiB = 1 << 30
CXL_GRANULE = 256 * MiB
# Names end up in libvirt XML, file names and bridge names: keep them boring. \Z, not $:
# $ also matches before a trailing newline.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}\Z")
NODE_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}\Z")
# A hugetlbfs mount becomes part of a QEMU -object option (mem-path=...), where ',' separates
# options and '=' assigns: only plain absolute paths of these characters.
HUGETLBFS_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+\Z")
# The guests' user-mode network (QEMU slirp's default 10.0.2.0/24) carries SSH: the isolated
# network must not overlap it or the guests cannot tell the two apart.
SLIRP_NET = ipaddress.IPv4Network("10.0.2.0/24")
PRIVATE_NETS = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
FIRST_HOST = 10  # node i gets the network address + FIRST_HOST + i
# Host memory QEMU itself needs per TCG guest beyond guest RAM (translation cache, overhead).
QEMU_OVERHEAD = 384 * MiB
MAX_MHDS_PER_NODE = 4
MAX_NODES = 16
MAX_DISK_MBPS = 100_000  # MB/s: beyond any disk
# Extra QEMU arguments and kernel command-line text end up in libvirt XML and argv: bounded,
# printable, one line (a newline would split a libvirt <cmdline> into something else).
MAX_QEMU_ARGS = 64
MAX_ARG_LEN = 1024
PRINTABLE_RE = re.compile(r"^[\x20-\x7e]*\Z")


class Accel(StrEnum):
    AUTO = "auto"
    TCG = "tcg"
    KVM = "kvm"


class KernelKind(StrEnum):
    DEBIAN = "debian"
    MM_TEMPLATE = "mm-template"
    MM_TEMPLATE_DEBUG = "mm-template-debug"  # DEBUG_VM, lockdep: for the slow test tier
    CUSTOM = "custom"  # `kernel: /path/to/bzImage`: the user's own build (never written as a kind)


class Debug(StrEnum):
    GDB = "gdb"  # QEMU's gdb stub, on 127.0.0.1 and a free port recorded in the state


class QemuKind(StrEnum):
    PATCHED = "patched"  # built from qemu-patches/: non-interleaved CXL memory is direct-mapped
    DEBIAN = "debian"    # bookworm-backports' QEMU 10.0.2: every CXL access is MMIO


class CxlPath(StrEnum):
    DIRECT = "direct"  # the window maps the device's memory as RAM (needs qemu: patched)
    MMIO = "mmio"      # every access goes through QEMU's CXL decode callbacks


class Backing(StrEnum):
    SHM = "shm"
    HUGETLBFS = "hugetlbfs"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    vcpus: int = 1
    memory: Size = Size(1 * GiB)
    qemu_args: tuple[str, ...] = ()
    debug: Debug | None = None
    disk_read_mbps: int | None = None  # QEMU throttles the root disk's reads (MB/s): a modelled SSD


@dataclass(frozen=True)
class NodeGroup:
    """`nodes: {count: N, ...}` shorthand: N identical nodes named PREFIX0..PREFIXN-1."""

    count: int
    prefix: str = "node"
    vcpus: int = 1
    memory: Size = Size(1 * GiB)
    qemu_args: tuple[str, ...] = ()
    debug: Debug | None = None
    disk_read_mbps: int | None = None


@dataclass(frozen=True)
class MhdSpec:
    name: str
    size: Size
    heads: tuple[str, ...] | None = None  # None: every node
    backing: Backing = Backing.SHM
    hugetlbfs: str = "/dev/hugepages"
    window: Size = Size(4 * GiB)
    path: CxlPath = CxlPath.DIRECT


@dataclass(frozen=True)
class NetworkSpec:
    """The isolated host-only network between nodes; nothing is routed off the machine."""

    subnet: str = "10.213.0.0/24"


@dataclass(frozen=True)
class RawTopology:
    name: str
    nodes: Yaml  # the node list as written: parsed by _nodes with line-tracked errors
    mhds: tuple[MhdSpec, ...] = ()
    image: str = "bookworm"
    kernel: str = str(KernelKind.MM_TEMPLATE)  # a kind, or the path of the user's own bzImage
    modules: str | None = None  # with a kernel path: INSTALL_MOD_PATH of `make modules_install`
    append: str = ""  # extra kernel command-line arguments
    accelerator: Accel = Accel.AUTO
    qemu: QemuKind = QemuKind.PATCHED
    network: NetworkSpec = NetworkSpec()


@dataclass(frozen=True)
class Mhd:
    name: str
    index: int
    size: int
    heads: tuple[str, ...]
    backing: Backing
    hugetlbfs: str
    window: int
    path: CxlPath = CxlPath.DIRECT


@dataclass(frozen=True)
class NodeConfig:
    name: str
    index: int
    vcpus: int
    memory: int
    address: str  # on the isolated network, with prefix length
    qemu_args: tuple[str, ...] = ()  # passed through verbatim, after the testbed's own
    debug: Debug | None = None
    # The guest's disk is a file the host serves from its page cache: at memory speed, not a
    # disk's. A read limit (QEMU's throttling, libvirt <iotune>) models a disk; reads the guest's
    # own page cache serves are not throttled.
    disk_read_mbps: int | None = None


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    nodes: tuple[NodeConfig, ...]
    mhds: tuple[Mhd, ...]
    image: str
    kernel: KernelKind
    accelerator: Accel
    subnet: str
    qemu: QemuKind = QemuKind.PATCHED
    kernel_path: str = ""  # with KernelKind.CUSTOM: the bzImage
    modules: str = ""      # with KernelKind.CUSTOM: a modules tree (lib/modules/RELEASE), or none
    append: str = ""
    text: str = field(default="", repr=False, compare=False)

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def mhds_of(self, node: str) -> tuple[Mhd, ...]:
        return tuple(m for m in self.mhds if node in m.heads)

    def required_memory(self) -> int:
        return sum(n.memory + QEMU_OVERHEAD for n in self.nodes) + sum(
            m.size for m in self.mhds if m.backing is Backing.SHM
        )

    def as_dict(self) -> JsonObject:
        return dataclasses.asdict(self) | {"text": None}


@dataclass(frozen=True)
class HostFacts:
    """What the host can give; injected so validation is testable without the real host."""

    mem_available: int
    cpus: int
    hugepages_free: int = 0  # bytes


def host_facts() -> HostFacts:
    import os

    info = meminfo.parse(Path("/proc/meminfo").read_text())  # kB; HugePages_Free is a count
    hp = info.get("HugePages_Free", 0) * info.get("Hugepagesize", 0) * 1024
    return HostFacts(info.get("MemAvailable", 0) * 1024, os.cpu_count() or 1, hp)


def _nodes(doc: Document, raw: Yaml) -> list[tuple[NodeSpec, KeyPath]]:
    kp: KeyPath = ("nodes",)
    if isinstance(raw, bool) or raw is None:
        raise doc.error(kp, "expected a count, a mapping with count, or a list of nodes")
    if isinstance(raw, int):
        raw = {"count": raw}
    if isinstance(raw, dict):
        group = from_mapping(doc, NodeGroup, raw, kp)
        if not 1 <= group.count <= MAX_NODES:
            raise doc.error((*kp, "count"), f"must be between 1 and {MAX_NODES}, got {group.count}")
        if not NODE_RE.match(group.prefix):
            raise doc.error((*kp, "prefix"), f"unsafe name {group.prefix!r}: use [a-z][a-z0-9-]*")
        spec = [(NodeSpec(f"{group.prefix}{i}", group.vcpus, group.memory, group.qemu_args, group.debug,
                          group.disk_read_mbps), kp)
                for i in range(group.count)]
        return spec
    if isinstance(raw, list):
        if not 1 <= len(raw) <= MAX_NODES:
            raise doc.error(kp, f"needs between 1 and {MAX_NODES} nodes, got {len(raw)}")
        return [(from_mapping(doc, NodeSpec, item, (*kp, i)), (*kp, i)) for i, item in enumerate(raw)]
    raise doc.error(kp, f"expected a count, a mapping with count, or a list, got {type(raw).__name__}")


def _subnet(doc: Document, text: str) -> ipaddress.IPv4Network:
    kp: KeyPath = ("network", "subnet")
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        raise doc.error(kp, f"not an IP network: {text!r}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise doc.error(kp, "must be a private IPv4 network (10/8, 172.16/12 or 192.168/16)")
    for special, what in ((net.is_loopback, "loopback"), (net.is_link_local, "link-local"),
                          (net.is_multicast, "multicast"), (net.is_reserved, "reserved"),
                          (net.is_unspecified, "unspecified")):
        if special:
            raise doc.error(kp, f"{net} is a {what} network: must be a private IPv4 network (10/8, 172.16/12 or 192.168/16)")
    if not any(net.subnet_of(p) for p in PRIVATE_NETS) or net.prefixlen > 28:
        raise doc.error(kp, "must be a private IPv4 network of /28 or larger inside 10/8, 172.16/12 or 192.168/16")
    if net.overlaps(SLIRP_NET):
        raise doc.error(kp, f"overlaps {SLIRP_NET}, the guests' user network (QEMU's default): choose another range")
    return net


def _one_line(doc: Document, kp: KeyPath, text: str, what: str) -> None:
    if len(text) > MAX_ARG_LEN:
        raise doc.error(kp, f"{what} is longer than {MAX_ARG_LEN} characters")
    if not PRINTABLE_RE.match(text):
        raise doc.error(kp, f"{what} must be printable ASCII on one line (no newlines or control characters)")


def _qemu_args(doc: Document, kp: KeyPath, args: tuple[str, ...]) -> None:
    if len(args) > MAX_QEMU_ARGS:
        raise doc.error(kp, f"at most {MAX_QEMU_ARGS} arguments, got {len(args)}")
    for j, arg in enumerate(args):
        _one_line(doc, (*kp, j), arg, "a QEMU argument")
        if not arg:
            raise doc.error((*kp, j), "an empty QEMU argument")


def _existing(doc: Document, kp: KeyPath, text: str, want_dir: bool) -> str:
    """An absolute path, relative ones taken from the topology file's folder, that exists."""
    _one_line(doc, kp, text, "a path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(doc.path).resolve().parent / path
    ok = path.is_dir() if want_dir else path.is_file()
    if not ok:
        raise doc.error(kp, f"{path}: no such {'directory' if want_dir else 'file'}")
    return str(path.resolve())


def _kernel(doc: Document, raw: RawTopology) -> tuple[KernelKind, str, str]:
    """`kernel:` names a kind, or (any value with a '/') the user's own bzImage."""
    if "/" not in raw.kernel:
        kinds = [k for k in KernelKind if k is not KernelKind.CUSTOM]
        if raw.kernel not in kinds:
            raise doc.error(("kernel",), f"expected one of {', '.join(kinds)} or the path of a bzImage "
                            f"(containing a '/'), got {raw.kernel!r:.60}")
        if raw.modules is not None:
            raise doc.error(("modules",), "only with `kernel: /path/to/bzImage` (the built kernels bring their own)")
        return KernelKind(raw.kernel), "", ""
    image = _existing(doc, ("kernel",), raw.kernel, want_dir=False)
    if raw.modules is None:
        return KernelKind.CUSTOM, image, ""
    modules = _existing(doc, ("modules",), raw.modules, want_dir=True)
    if not (Path(modules) / "lib" / "modules").is_dir():
        raise doc.error(("modules",), f"{modules}: no lib/modules inside (use the INSTALL_MOD_PATH of "
                        "`make modules_install`)")
    return KernelKind.CUSTOM, image, modules


def parse(doc: Document, host: HostFacts | None = None) -> Topology:
    raw: RawTopology = from_mapping(doc, RawTopology, doc.data, ())
    if not NAME_RE.match(raw.name):
        raise doc.error(("name",), f"unsafe name {raw.name!r}: use 1-20 of [a-z0-9-], starting with a letter")
    # The image name becomes a path under images/ and the cache (built, later removed): the
    # same safe-name rule as testbed names, checked before any path is made from it.
    if not NAME_RE.match(raw.image):
        raise doc.error(("image",), f"unsafe image name {raw.image!r}: use 1-20 of [a-z0-9-], starting with a letter")
    if not (paths.DATA / "images" / raw.image / "packages.txt").is_file():
        raise doc.error(("image",), f"unknown image {raw.image!r}: no images/{raw.image}/packages.txt")
    net = _subnet(doc, raw.network.subnet)
    kind, kernel_path, modules = _kernel(doc, raw)
    _one_line(doc, ("append",), raw.append, "append")

    nodes: list[NodeConfig] = []
    seen: dict[str, KeyPath] = {}
    for i, (spec, kp) in enumerate(_nodes(doc, doc.data.get("nodes"))):
        name_kp = (*kp, "name") if isinstance(kp[-1], int) else kp
        if not NODE_RE.match(spec.name):
            raise doc.error(name_kp, f"unsafe node name {spec.name!r}: use 1-16 of [a-z0-9-], starting with a letter")
        if spec.name in seen:
            raise doc.error(name_kp, f"duplicate node name {spec.name!r}")
        seen[spec.name] = kp
        if not 1 <= spec.vcpus <= 64:
            raise doc.error((*kp, "vcpus"), f"must be between 1 and 64, got {spec.vcpus}")
        if spec.memory < 512 * MiB or spec.memory % (64 * MiB):
            raise doc.error((*kp, "memory"), f"must be a multiple of 64MiB and at least 512MiB, got {spec.memory.human()}")
        # Addresses by arithmetic: materialising net.hosts() of a /8 takes seconds and GiBs.
        if FIRST_HOST + i >= net.num_addresses - 1:  # the last address is the broadcast
            raise doc.error(("network", "subnet"), f"too small for {i + 1} nodes")
        _qemu_args(doc, (*kp, "qemu_args"), spec.qemu_args)
        if spec.disk_read_mbps is not None and not 1 <= spec.disk_read_mbps <= MAX_DISK_MBPS:
            raise doc.error((*kp, "disk_read_mbps"), f"must be between 1 and {MAX_DISK_MBPS}, got {spec.disk_read_mbps}")
        nodes.append(NodeConfig(spec.name, i, spec.vcpus, int(spec.memory), f"{net.network_address + FIRST_HOST + i}/{net.prefixlen}",
                                spec.qemu_args, spec.debug, spec.disk_read_mbps))

    mhds: list[Mhd] = []
    mhd_names: set[str] = set()
    per_node: dict[str, int] = {}
    for i, m in enumerate(raw.mhds):
        kp = ("mhds", i)
        if not NODE_RE.match(m.name):
            raise doc.error((*kp, "name"), f"unsafe name {m.name!r}: use 1-16 of [a-z0-9-], starting with a letter")
        if m.name in mhd_names:
            raise doc.error((*kp, "name"), f"duplicate MHD name {m.name!r}")
        mhd_names.add(m.name)
        if m.size <= 0 or m.size % CXL_GRANULE:
            raise doc.error((*kp, "size"), f"must be a non-zero multiple of 256MiB, got {Size(m.size).human()}")
        if m.window % CXL_GRANULE or m.window < m.size:
            raise doc.error((*kp, "window"), f"must be a multiple of 256MiB and at least the size ({Size(m.size).human()})")
        heads = m.heads if m.heads is not None else tuple(n.name for n in nodes)
        if not heads:
            raise doc.error((*kp, "heads"), "needs at least one head")
        for j, head in enumerate(heads):
            if head not in seen:
                raise doc.error((*kp, "heads", j), f"unknown node {head!r} (nodes: {', '.join(seen)})")
            if heads.index(head) != j:
                raise doc.error((*kp, "heads", j), f"node {head!r} listed twice")
            per_node[head] = per_node.get(head, 0) + 1
            if per_node[head] > MAX_MHDS_PER_NODE:
                raise doc.error((*kp, "heads", j), f"node {head!r} is a head of more than {MAX_MHDS_PER_NODE} MHDs")
        if m.backing is Backing.HUGETLBFS and not m.hugetlbfs.startswith("/"):
            raise doc.error((*kp, "hugetlbfs"), "must be an absolute path to a hugetlbfs mount")
        if not HUGETLBFS_RE.match(m.hugetlbfs) or len(m.hugetlbfs) > 200 or \
                any(part in (".", "..") for part in m.hugetlbfs.split("/")):
            raise doc.error((*kp, "hugetlbfs"), f"unsafe path {m.hugetlbfs!r}: an absolute path of [A-Za-z0-9_.-] "
                            "components (no '.', '..', ',' or '='), at most 200 characters")
        if m.path is CxlPath.DIRECT and raw.qemu is QemuKind.DEBIAN:
            raise doc.error((*kp, "path"), "direct needs `qemu: patched` (Debian's QEMU maps CXL memory "
                            "only as MMIO); use `path: mmio` or `qemu: patched`")
        mhds.append(Mhd(m.name, i, int(m.size), tuple(heads), m.backing, m.hugetlbfs, int(m.window), m.path))

    topo = Topology(raw.name, doc.path, tuple(nodes), tuple(mhds), raw.image, kind,
                    raw.accelerator, str(net), raw.qemu, kernel_path, modules, raw.append)
    if host is not None:
        check_host(doc, topo, host)
    return topo


def check_host(doc: Document, topo: Topology, host: HostFacts) -> None:
    need = topo.required_memory()
    if need > host.mem_available:
        raise doc.error(("nodes",), f"needs {need / GiB:.1f} GiB of host memory (nodes, QEMU overhead, shm MHDs) "
                        f"but only {host.mem_available / GiB:.1f} GiB is available")
    huge = sum(m.size for m in topo.mhds if m.backing is Backing.HUGETLBFS)
    if huge > host.hugepages_free:
        raise doc.error(("mhds",), f"hugetlbfs MHDs need {huge / GiB:.1f} GiB of free huge pages, "
                        f"host has {host.hugepages_free / GiB:.1f} GiB (set vm.nr_hugepages)")
    for node in topo.nodes:
        if node.vcpus > host.cpus * 4:
            raise doc.error(("nodes",), f"node {node.name} wants {node.vcpus} vCPUs; host has {host.cpus} CPUs")


def load(path: Path | str, host: HostFacts | None = None, text: str | None = None) -> Topology:
    doc = load_document(path, text)
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping at the top level")
    topo = parse(doc, host)
    return dataclasses.replace(topo, text=doc.text)  # the text parsed: the file is read once


def renamed_topology(path: str | Path, name: str, tmp: Path) -> Path:
    """A copy of a topology file under another testbed name (tests and benches use their own names)."""
    data: dict[str, Yaml] = yaml.safe_load(Path(path).read_text())
    data["name"] = name
    # Paths in the file are relative to its folder, which the copy does not share.
    for key in ("kernel", "modules"):
        value = data.get(key)
        if isinstance(value, str) and "/" in value and not Path(value).expanduser().is_absolute():
            data[key] = str(Path(path).resolve().parent / value)
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


__all__ = ["Accel", "Backing", "CxlPath", "Debug", "HostFacts", "KernelKind", "Mhd", "NodeConfig", "QemuKind", "Topology", "convert",
           "load", "renamed_topology"]
