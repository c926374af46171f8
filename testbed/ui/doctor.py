"""`testbed doctor`: checks the host and prints a fix for every problem."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from testbed import paths
from testbed.artifacts import qemu
from testbed.config.topology import host_facts
from testbed.errors import TestbedError
from testbed.hostcmd import run
from testbed.lifecycle import accel, daemons, hostsetup

MIN_QEMU = (8, 0)
DEPS = "make deps   (runs scripts/install-host-deps: bookworm-backports QEMU 10, libvirt 11, tools)"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _qemu() -> Check:
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        return Check("qemu", False, "qemu-system-x86_64 not found", DEPS)
    out = run([exe, "--version"], check=False).stdout or ""
    m = re.search(r"version (\d+)\.(\d+)", out)
    ver = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if ver < MIN_QEMU:
        return Check("qemu", False, f"QEMU {ver[0]}.{ver[1]} is too old for CXL Type-3 volatile memory", DEPS)
    devs = run([exe, "-device", "help"], check=False).stdout or ""
    missing = [d for d in ("cxl-type3", "pxb-cxl", "cxl-rp") if f'"{d}"' not in devs]
    if missing:
        return Check("qemu-cxl", False, f"QEMU lacks devices {', '.join(missing)}", DEPS)
    return Check("qemu-debian", True, f"QEMU {ver[0]}.{ver[1]} with cxl-type3, pxb-cxl, cxl-rp (MMIO path only)")


def _patched_qemu() -> Check:
    """The emulator topologies use by default: built from qemu-patches/, with the direct path."""
    try:
        key = qemu.build_key(qemu.TARBALL_SHA256)["key"]
    except TestbedError as exc:
        return Check("qemu-patched", False, str(exc), "restore qemu-patches/ from git")
    rows = [r for r in qemu.cached() if r.get("kind") == "patched"]
    current = next((r for r in rows if r.get("key") == key), None)
    fix = "testbed qemu build   (make demo and make test run it; cached by content hash)"
    if current is None:
        older = " (only a build of other patches is cached)" if rows else ""
        return Check("qemu-patched", False, f"the patched QEMU for this checkout (key {key}) is not built{older}", fix)
    exe = Path(current["dir"]) / "bin" / "qemu-system-x86_64"
    props = run([exe, "-device", "cxl-type3,help"], check=False).stdout or ""
    if "direct-map=" not in props:
        return Check("qemu-patched", False, f"{exe} has no cxl-type3 direct-map property", fix)
    return Check("qemu-patched", True, f"{current.get('version', '?')} with {len(current.get('patches', {}))} patches "
                 f"(key {key}): non-interleaved CXL memory is direct-mapped")


def _libvirt() -> Check:
    try:
        daemons.ensure_running()
    except TestbedError as exc:
        return Check("libvirt", False, str(exc), DEPS + "; then `libvirtd -d` (or systemctl start libvirtd)")
    with daemons.connection() as conn:
        ver = conn.getLibVersion()
    return Check("libvirt", True, f"libvirtd {ver // 1000000}.{ver // 1000 % 1000}.{ver % 1000} answers on {daemons.URI}")


def _tools() -> list[Check]:
    need = {"debootstrap": DEPS, "mkfs.ext4": DEPS, "qemu-img": DEPS, "ssh-keygen": DEPS,
            "ssh": DEPS, "virt-xml-validate": DEPS, "busybox": DEPS, "depmod": DEPS}
    missing = [t for t in need if not shutil.which(t) and not Path(f"/bin/{t}").exists()]
    if missing:
        return [Check("tools", False, "missing: " + ", ".join(missing), DEPS)]
    return [Check("tools", True, "debootstrap, mkfs.ext4, qemu-img, ssh, busybox, depmod present")]


def _kvm() -> Check:
    try:
        emu = qemu.build()
        ok, why = accel.probe_kvm(emu.path)
    except TestbedError as exc:
        return Check("kvm", False, f"cannot run the KVM probe: {exc}", DEPS)
    if ok:
        return Check("kvm", True, f"{why}: accelerator auto picks kvm")
    return Check("kvm", True, f"{why}: accelerator auto picks tcg (slower, but CXL memory is usable as memory)")


def _memory_disk() -> list[Check]:
    facts = host_facts()
    checks = []
    gib = facts.mem_available / (1 << 30)
    checks.append(Check("memory", gib >= 4, f"{gib:.1f} GiB available",
                        "" if gib >= 4 else "free memory: the 2-node testbed needs about 4 GiB"))
    root = paths.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free / (1 << 30)
    checks.append(Check("disk", free >= 5, f"{free:.1f} GiB free under {root}",
                        "" if free >= 5 else f"free disk under {root}: images and kernels need about 5 GiB"))
    shm = shutil.disk_usage(paths.shm_root()).free / (1 << 30)
    checks.append(Check("shm", shm >= 1, f"{shm:.1f} GiB free in {paths.shm_root()}",
                        "" if shm >= 1 else "enlarge /dev/shm (mount -o remount,size=8G /dev/shm)"))
    return checks


def _root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, "running as root" if ok else "not root", "" if ok else "run as root (sudo testbed ...)")


def host_setup_check() -> Check:
    """What `testbed setup` would change; doctor only reports it."""
    changes = hostsetup.planned()
    if not changes:
        return Check("host-setup", True, "nothing for `testbed setup` to change")
    return Check("host-setup", False, "; ".join(c.describe() for c in changes),
                 "sudo testbed setup   (make demo and make test run it; it prints what it changes)")


def run_checks(euid: int | None = None) -> list[Check]:
    hostsetup.require_root("testbed doctor", f"it starts libvirtd and checks {daemons.URI}, "
                           f"{paths.cache_root()} and /dev/kvm", euid)
    checks = [_root(), _qemu(), _patched_qemu(), *_tools(), _libvirt(), host_setup_check(), *_memory_disk()]
    if all(c.ok for c in checks):
        checks.append(_kvm())
    return checks
