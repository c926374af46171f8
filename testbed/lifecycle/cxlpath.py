"""Which path each CXL head really takes, read back from QEMU itself over QMP.

The patched QEMU reports, per Type-3 device, how many bytes are served by a direct RAM
mapping (`direct-mapped-size`). A head whose region is committed and fully mapped runs at
memory speed; anything less means some or all accesses take the MMIO callback path. Reading
this from QEMU, not from the topology, is what makes a silent fallback visible."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

import libvirt
import libvirt_qemu
from tbproto.jsontypes import Json, JsonObject

from testbed.config.topology import CxlPath
from testbed.lifecycle import render
from testbed.lifecycle.state import State


class Observed(StrEnum):
    DIRECT = "direct"    # the whole device is direct-mapped
    PARTIAL = "partial"  # part of it (another decoder, or a region smaller than the device)
    MMIO = "mmio"        # nothing is direct-mapped: every access is a QEMU callback
    UNKNOWN = "unknown"  # QEMU did not answer


@dataclass(frozen=True)
class HeadPath:
    node: str
    mhd: str
    device: str
    configured: str
    observed: Observed
    direct_bytes: int
    size: int
    detail: str = ""

    @property
    def fell_back(self) -> bool:
        return self.configured == CxlPath.DIRECT and self.observed is not Observed.DIRECT

    def as_dict(self) -> JsonObject:
        return asdict(self) | {"observed": str(self.observed), "fell_back": self.fell_back}


def qom_get(dom: libvirt.virDomain, path: str, prop: str) -> Json:
    """One QMP qom-get; raises LookupError with QEMU's message when QEMU refuses it."""
    cmd = {"execute": "qom-get", "arguments": {"path": path, "property": prop}}
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))
    if "error" in reply:
        raise LookupError(reply["error"].get("desc", str(reply["error"])))
    return reply["return"]


def classify(direct: int, size: int) -> Observed:
    if direct <= 0:
        return Observed.MMIO
    return Observed.DIRECT if direct >= size else Observed.PARTIAL


def head_path(dom: libvirt.virDomain, node: str, k: int, mhd: str, configured: str) -> HeadPath:
    dev = render.device_id(k)
    try:
        size = int(qom_get(dom, f"/objects/cxltb-mem{k}", "size"))
    except (LookupError, libvirt.libvirtError, ValueError) as exc:
        return HeadPath(node, mhd, dev, configured, Observed.UNKNOWN, 0, 0, f"QMP: {exc}")
    try:
        direct = int(qom_get(dom, f"/machine/peripheral/{dev}", "direct-mapped-size"))
        detail = ""
    except LookupError as exc:
        # Debian's QEMU has no such property: it has only the MMIO path.
        direct, detail = 0, f"QEMU has no direct mapping ({exc})"
    except (libvirt.libvirtError, ValueError) as exc:
        return HeadPath(node, mhd, dev, configured, Observed.UNKNOWN, 0, size, f"QMP: {exc}")
    return HeadPath(node, mhd, dev, configured, classify(direct, size), direct, size, detail)


def testbed_paths(conn: libvirt.virConnect, nodes: dict[str, tuple[str, list[str]]],
                  configured: dict[str, str]) -> list[HeadPath]:
    """nodes: node -> (domain name, the node's MHD names in device order);
    configured: MHD name -> the topology's path for it."""
    out: list[HeadPath] = []
    for node, (domain, mhds) in nodes.items():
        try:
            dom = conn.lookupByName(domain)
        except libvirt.libvirtError as exc:
            out.extend(HeadPath(node, m, render.device_id(k), configured.get(m, "?"), Observed.UNKNOWN, 0, 0,
                                f"domain: {exc}") for k, m in enumerate(mhds))
            continue
        out.extend(head_path(dom, node, k, m, configured.get(m, "?")) for k, m in enumerate(mhds))
    return out


def configured_paths(topology_file: str, topology_text: str) -> dict[str, str]:
    """MHD name -> the path its topology asked for (what `up` rendered into the domains)."""
    from testbed.config import topology

    try:
        topo = topology.load(topology_file, text=topology_text)
    except Exception:
        return {}
    return {m.name: str(m.path) for m in topo.mhds}


def for_state(conn: libvirt.virConnect, state: State) -> list[HeadPath]:
    """Every head of a testbed's recorded state (a state.State)."""
    configured = configured_paths(state.topology_file, state.topology_text)
    nodes = {ns.name: (ns.domain, list(ns.mhds)) for ns in state.nodes.values()}
    return testbed_paths(conn, nodes, configured)


def read_for_state(state: State) -> list[JsonObject]:
    """for_state on a fresh libvirt connection, as plain dicts (what results record)."""
    from testbed.lifecycle import daemons

    with daemons.connection() as conn:
        return [h.as_dict() for h in for_state(conn, state)]
