"""Isolation across reuse: what the `probe` function saw (and its sandbox's init saw) after
`dirty` ran in the same sandbox, checked for each kind of leftover.

leaks() returns {category: evidence} for every category that leaked; empty means isolated.
STEP_FOR says which release step each check relies on: the VM tests skip that step and expect
exactly that check to fail.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from tbagent.functions import dirty
from tbagent.sandbox.zygote import FUNCTION_MOUNTS

if TYPE_CHECKING:
    from tbproto.jsontypes import Json, JsonObject

CATEGORIES = ("files", "processes", "mounts", "env", "sockets", "cgroup", "hostname", "ipc", "network")
PROBE_EVENT: dict[str, list[Json]] = {"paths": [*dirty.LEAK_FILES, f"{dirty.LEAK_MOUNT}/inside"], "ports": [dirty.LEAK_TCP_PORT]}
MEMORY_PEAK_LIMIT = dirty.LEAK_MEMORY // 2

# Cleanup steps whose removal each check detects. Processes and sockets are held by processes: with
# `kill` gone, the cgroup step's rmdir fails (EBUSY) and the sandbox is destroyed instead of reused,
# so those checks are shown failing with both `kill` and `cgroup` skipped.
STEP_FOR = {
    "files": ("upper",),
    "processes": ("kill", "cgroup"),
    "mounts": ("mounts",),
    "env": ("env",),
    "sockets": ("kill", "cgroup"),
    "cgroup": ("cgroup",),
    "hostname": ("hostname",),
    "ipc": ("ipc",),
    "network": ("network",),
}


def extra_mounts(view: JsonObject) -> list[str]:
    """Mounts in the sandbox beyond its stage and the standard ones of one function's rootfs."""
    mounts: list[str] = view["mounts"]
    baseline: list[str] = view["mounts_baseline"]
    extra = Counter(mounts) - Counter(baseline) - Counter(FUNCTION_MOUNTS)
    return sorted(extra.elements())


def leaks(probe: JsonObject, view: JsonObject, hostname: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    out["files"] = [p for p, there in probe["files"].items() if there]
    out["processes"] = [f"{p['pid']} {p['comm']}" for p in probe["processes"] if p["pid"] not in (1, probe["self"])]
    out["mounts"] = [m for m in probe["mounts"] if "leak" in m] + [f"sandbox: {m}" for m in extra_mounts(view)]
    out["env"] = [f"{k}={v}" for k, v in probe["env"].items() if k == dirty.LEAK_ENV]
    socks = probe["sockets"]
    out["sockets"] = (
        [f"tcp {s['port']} {s['state']}" for s in socks["tcp"] if s["port"] == dirty.LEAK_TCP_PORT]
        + [f"udp {s['port']}" for s in socks["udp"] if s["port"] == dirty.LEAK_UDP_PORT]
        + [f"unix {u}" for u in socks["unix"] if dirty.LEAK_UNIX in u]
        + [f"port {p} not bindable" for p, ok in socks["bindable"].items() if not ok]
    )
    cg = probe["cgroup"]
    if cg.get("memory.peak", 0) >= MEMORY_PEAK_LIMIT:
        out["cgroup"].append(f"memory.peak {cg['memory.peak']}")
    if cg.get("pids.current", 1) > 1:
        out["cgroup"].append(f"pids.current {cg['pids.current']}")
    if "memory.peak" not in cg or "pids.current" not in cg:
        out["cgroup"].append(f"cgroup files missing: {sorted(cg)}")
    if probe["hostname"] != hostname:
        out["hostname"] = [probe["hostname"]]
    if dirty.LEAK_SHM_KEY in probe["ipc_shm_keys"]:
        out["ipc"] = [f"shm key {dirty.LEAK_SHM_KEY:#x}"]
    if probe["net"].get("mtu") == dirty.LEAK_MTU or not probe["net"].get("up"):
        out["network"] = [f"eth0 {probe['net']}"]
    return {k: v for k, v in out.items() if v}
