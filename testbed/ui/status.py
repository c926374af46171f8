"""What a testbed looks like now: libvirt state plus what each running node reports."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import libvirt
from tbproto.jsontypes import JsonObject

from testbed import paths
from testbed.errors import NodeError, UserError
from testbed.lifecycle import cxlpath, daemons, names
from testbed.lifecycle import state as st
from testbed.lifecycle.testbed import Testbed

DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
}


def _guest_info(tb: Testbed, node: str) -> JsonObject:
    try:
        out = tb.node(node).run(["tbagent", "info"], timeout=30).stdout
        data: JsonObject = json.loads(out)
        return data
    except (NodeError, ValueError) as exc:
        return {"error": str(exc)}


def testbed_status(conn: libvirt.virConnect, testbed: str, probe: bool = True) -> JsonObject:
    layout = names.Layout(testbed)
    state = st.load(layout)
    if state is None:
        raise UserError(f"no testbed named {testbed!r} (known: {', '.join(st.known_testbeds(paths.state_root())) or 'none'})")
    nodes: list[JsonObject] = []
    running: dict[str, st.NodeState] = {}
    for ns in state.nodes.values():
        try:
            code = conn.lookupByName(ns.domain).state()[0]
            dstate = DOMAIN_STATES.get(code, "other")
        except libvirt.libvirtError:
            dstate = "absent"
        if dstate == "running":
            running[ns.name] = ns
        nodes.append({
            "name": ns.name, "domain": ns.domain, "state": dstate, "address": ns.address,
            "ssh": {"host": "127.0.0.1", "port": ns.ssh_port, "user": "root", "key": str(layout.client_key)},
            "mhds": ns.mhds,
        } | ({"gdb": {"host": "127.0.0.1", "port": ns.gdb_port}} if ns.gdb_port else {}))
    if probe and running:
        with Testbed(state) as tb, ThreadPoolExecutor(max_workers=len(running)) as pool:
            infos = dict(zip(running, pool.map(lambda n: _guest_info(tb, n), running), strict=True))
        for node in nodes:
            info = infos.get(node["name"])
            if info is None:
                continue
            if "error" in info:
                node["state"] = "unreachable"
                node["error"] = info["error"]
                continue
            node["kernel"] = info.get("kernel")
            node["ready_s"] = info.get("ready_s")
            node["cxl"] = info.get("cxl", [])
    heads = [h.as_dict() for h in cxlpath.for_state(conn, state)] if running else []
    return {"testbed": testbed, "phase": str(state.phase), "topology": state.topology_file,
            "accelerator": state.accel, "kernel": state.kernel, "qemu": state.qemu, "image": state.image,
            "timings": state.timings, "nodes": nodes, "cxl_paths": heads}


def _status_or_error(conn: libvirt.virConnect, testbed: str, probe: bool) -> JsonObject:
    try:
        return testbed_status(conn, testbed, probe)
    except st.CorruptState as exc:
        # One bad state file must not hide the other testbeds: it is an entry of its own.
        return {"testbed": testbed, "phase": "corrupt", "error": str(exc), "nodes": []}


def all_status(testbeds: list[str], probe: bool = True) -> list[JsonObject]:
    with daemons.connection() as conn:
        return [_status_or_error(conn, t, probe) for t in testbeds]
