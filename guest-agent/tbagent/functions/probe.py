"""probe: reports what a function can observe of its sandbox (for the isolation checks)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "0A": "LISTEN"}


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _inet(table: str) -> list[JsonObject]:
    out = []
    for line in _read(table).splitlines()[1:]:
        f = line.split()
        out.append({"port": int(f[1].split(":")[1], 16), "state": TCP_STATES.get(f[3], f[3])})
    return out


def _processes() -> list[JsonObject]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            cmd = _read(f"/proc/{d}/cmdline").replace("\0", " ").strip()
            out.append({"pid": int(d), "comm": _read(f"/proc/{d}/comm").strip(), "cmdline": cmd})
    return sorted(out, key=lambda p: p["pid"])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - a bind test in the sandbox's netns
        except OSError:
            return False
    return True


def _cgroup() -> dict[str, int]:
    out = {}
    for name in ("memory.peak", "memory.current", "pids.current", "pids.peak"):
        text = _read(f"/sys/fs/cgroup/{name}").strip()
        if text.isdigit():
            out[name] = int(text)
    return out


def _net() -> JsonObject:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            mtu = struct.unpack_from("i", fcntl.ioctl(s, 0x8921, struct.pack("16s24x", b"eth0")), 16)[0]  # SIOCGIFMTU
            flags = struct.unpack_from("H", fcntl.ioctl(s, 0x8913, struct.pack("16s24x", b"eth0")), 16)[0]  # SIOCGIFFLAGS
        except OSError:
            return {}
    return {"mtu": mtu, "up": bool(flags & 1), "routes": _read("/proc/net/route").splitlines()[1:]}


def handle(event: JsonObject) -> JsonObject:
    paths = list(event.get("paths", []))
    return {
        "self": os.getpid(),
        "files": {p: os.path.lexists(p) for p in paths},
        "processes": _processes(),
        "mounts": [line.split()[4] for line in _read("/proc/self/mountinfo").splitlines()],
        "env": dict(os.environ),
        "sockets": {
            "tcp": _inet("/proc/net/tcp") + _inet("/proc/net/tcp6"),
            "udp": _inet("/proc/net/udp") + _inet("/proc/net/udp6"),
            "unix": [ln.split()[7] for ln in _read("/proc/net/unix").splitlines()[1:] if len(ln.split()) > 7],
            "bindable": {str(p): _bindable(int(p)) for p in event.get("ports", [])},
        },
        "cgroup": _cgroup(),
        "self_cgroup": _read("/proc/self/cgroup").strip(),
        "hostname": socket.gethostname(),
        "net": _net(),
        "ipc_shm_keys": [int(ln.split()[0]) for ln in _read("/proc/sysvipc/shm").splitlines()[1:] if ln.split()],
    }
