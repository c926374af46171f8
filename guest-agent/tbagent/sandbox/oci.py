"""The baseline: the same sandbox made from scratch by a real OCI runtime (crun) from a bundle.

Per sandbox, as a container engine does it: the rootfs is an overlay of the same layers on a
fresh tmpfs upper (mounted here, like podman's storage driver), config.json is generated, `crun
create` makes namespaces (mount, PID, network, IPC, UTS, cgroup), the cgroup with the same limits
and the mounts, the veth pair goes into the container's network namespace (same code as the pool),
and `crun start` execs the same runner, which reports on its channel (crun passes stdio through:
the channel is the container's fd 0).

crun create does several phases in one call; VARIANTS switch one off at a time (no namespaces
but mount, no cgroup manager, no extra mounts) so the breakdown can be estimated by difference.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tbagent.functions import FunctionSpec
from tbagent.sandbox import cgroup, layers, linux, net, paths, proto, zygote
from tbagent.sandbox.cgroup import Group, Limits

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

CRUN = "crun"
VARIANTS = ("full", "no-ns", "no-cgroup", "no-mounts")
NAMESPACES = ("mount", "pid", "network", "ipc", "uts", "cgroup")
CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
        "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
        "PERFMON BPF CHECKPOINT_RESTORE").split()
RUNNER = ["/usr/bin/python3", "-I", "-m", "tbagent.sandbox.runner"]


def config(slot: int, spec: FunctionSpec, limits: Limits, variant: str = "full",
           env: dict[str, str] | None = None) -> JsonObject:
    """config.json for the baseline container: the pool's sandbox, as an OCI bundle."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    caps = [f"CAP_{c}" for c in CAPS]
    environment = {**zygote.BASE_ENV, **spec.env, **(env or {})}
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "nodev", "noexec"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "mode=755", "size=64k"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "nodev", "noexec"]},
    ]
    linux_cfg: JsonObject = {
        "namespaces": [{"type": t} for t in (NAMESPACES if variant != "no-ns" else ("mount",))],
        "maskedPaths": [], "readonlyPaths": [],
    }
    if variant != "no-cgroup":
        files = limits.files()
        quota, period = files["cpu.max"].split()
        linux_cfg["cgroupsPath"] = f"/{paths.CGROUP_TREE}/oci-{slot}"
        linux_cfg["resources"] = {
            "memory": {"limit": limits.memory_max if limits.memory_max is not None else -1},
            "cpu": {"period": int(period), **({} if quota == "max" else {"quota": int(quota)})},
            "pids": {"limit": limits.pids_max if limits.pids_max is not None else -1},
        }
    cfg = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": RUNNER, "cwd": "/",
                    "env": [f"{k}={v}" for k, v in environment.items()],
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": False},
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [] if variant == "no-mounts" else mounts,
        "linux": linux_cfg,
    }
    if variant != "no-ns":  # a hostname needs the UTS namespace
        cfg["hostname"] = f"oci-{slot}"
    return cfg


def _crun(*args: str, cgroup: bool = True, stdin: int | None = None, check: bool = True) -> str:
    """Run crun; its output goes to a file, not a pipe: the container keeps crun's stdio open."""
    argv = [CRUN, "--root", str(paths.CRUN_ROOT), *([] if cgroup else ["--cgroup-manager=disabled"]), *args]
    paths.LOGS.mkdir(parents=True, exist_ok=True)
    out = paths.LOGS / "crun.out"
    with open(out, "w+b") as fh:
        p = subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=fh, stderr=fh, check=False)
        fh.seek(0)
        text = fh.read().decode(errors="replace")
    if check and p.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {text.strip()}")
    return text


class OciSandbox:
    def __init__(self, slot: int, variant: str = "full") -> None:
        self.slot = slot
        self.variant = variant
        self.id = f"tboci{slot}"
        self.bundle = paths.OCI / self.id
        self.link = net.plan(slot, net.OCI_BASE, "tbo")
        self.chan: socket.socket | None = None
        self.pid = 0

    def create(self, spec: FunctionSpec, lowers: list[Path], limits: Limits, start: bool = True) -> dict[str, float]:
        """Everything up to the function's process running (and its initialisation), timed."""
        t: dict[str, float] = {}
        t0 = time.monotonic()
        rw, rootfs = self.bundle / "rw", self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        rw.mkdir()
        linux.mount("tbrw", str(rw), "tmpfs", linux.MS_NOSUID, "size=256m,mode=0755")
        (rw / "upper").mkdir()
        (rw / "work").mkdir()
        linux.mount("tboci", str(rootfs), "overlay", 0,
                    layers.overlay_options([str(p) for p in lowers], str(rw / "upper"), str(rw / "work")))
        t1 = time.monotonic()
        t["rootfs_outer"] = t1 - t0
        (self.bundle / "config.json").write_text(json.dumps(config(self.slot, spec, limits, self.variant)))
        t2 = time.monotonic()
        t["bundle"] = t2 - t1
        ours, theirs = proto.pair()
        self.chan = ours
        try:
            _crun("create", "--bundle", str(self.bundle), "--pid-file", str(self.bundle / "pid"), self.id,
                  cgroup=self.variant != "no-cgroup", stdin=theirs.fileno())
        finally:
            theirs.close()
        t3 = time.monotonic()
        t["create"] = t3 - t2
        self.pid = int((self.bundle / "pid").read_text())
        if not start:
            t["total"] = t3 - t0
            return t
        net.attach(self.pid, self.link)
        t4 = time.monotonic()
        t["network"] = t4 - t3
        _crun("start", self.id)
        proto.recv(ours, 60)
        t5 = time.monotonic()
        t["process"] = t5 - t4
        t["ready_sandbox"] = t5 - t0
        ready = proto.recv(ours, 120)
        if not ready.get("ready"):
            raise OSError(f"{spec.name} failed to initialise in crun: {ready.get('error')}")
        t["function_init"] = float(ready["init_s"])
        t["ready_function"] = time.monotonic() - t0
        return t

    def invoke(self, event: JsonObject, timeout: float = 60.0) -> JsonObject:
        assert self.chan is not None, "invoke before create"  # create() opens the channel
        proto.send(self.chan, {"event": event})
        return proto.recv(self.chan, timeout)

    def destroy(self) -> float:
        t0 = time.monotonic()
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        _crun("kill", self.id, "KILL", check=False)
        _crun("delete", "-f", self.id, check=False)
        for m in ("rootfs", "rw"):
            try:
                linux.umount(str(self.bundle / m), linux.MNT_DETACH)
            except OSError:
                pass
        shutil.rmtree(self.bundle, ignore_errors=True)
        net.delete_link(self.link.host_if)
        group = Group(f"oci-{self.slot}")
        if group.exists():
            group.destroy()
        return time.monotonic() - t0


def sweep() -> None:
    """Remove baseline containers, mounts and links a previous run left."""
    if paths.CRUN_ROOT.exists():
        listing = _crun("list", "-q", check=False).split()
        for cid in listing:
            _crun("delete", "-f", cid, check=False)
    if paths.OCI.exists():
        with open("/proc/self/mountinfo") as fh:
            points = [ln.split()[4] for ln in fh]
        for p in sorted((p for p in points if p.startswith(str(paths.OCI) + "/")), reverse=True):
            try:
                linux.umount(p, linux.MNT_DETACH)
            except OSError:
                pass
        shutil.rmtree(paths.OCI, ignore_errors=True)
    for link in net.stale_links(("tbo",)):
        net.delete_link(link)
    for g in cgroup.stale_groups():
        if g.name.startswith("oci-"):
            g.destroy()
    os.makedirs(paths.OCI, exist_ok=True)
