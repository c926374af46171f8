"""Accelerator choice. KVM is detected by trying: /dev/kvm can exist and accept
KVM_CREATE_VM while guests still die in early boot (as on this project's machines)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from testbed import paths
from testbed.errors import CommandError, UserError
from testbed.hostcmd import run
from testbed.kernel import Kernel
from testbed.topology import Accel

MARKER = "CXLTB-PROBE-OK"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_kvm(kernel: Kernel, emulator: Path, timeout: float = 60.0) -> tuple[bool, str]:
    """Boot the initramfs under KVM; True only if it reaches user space and powers off."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    cache = paths.cache_root() / "kvm-probe.json"
    try:
        data = json.loads(cache.read_text())
        if (data.get("boot_id") == _boot_id() and data.get("kernel") == str(kernel.directory)
                and data.get("emulator") == str(emulator)):
            return bool(data["ok"]), str(data["why"])
    except (OSError, ValueError, KeyError):
        pass
    t0 = time.monotonic()
    argv = [str(emulator), "-accel", "kvm", "-machine", "q35", "-cpu", "host", "-m", "256",
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initramfs),
            "-append", "console=ttyS0 cxltb.probe panic=-1"]
    try:
        out = run(argv, check=False, timeout=timeout).stdout or ""
        ok = MARKER in out
        why = f"guest booted under KVM in {time.monotonic() - t0:.1f}s" if ok else (
            "guest did not boot under KVM: " + (out.strip().splitlines() or ["no output"])[-1][:160])
    except CommandError:
        ok, why = False, f"guest did not boot under KVM within {timeout:.0f}s"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"boot_id": _boot_id(), "kernel": str(kernel.directory), "emulator": str(emulator),
                                 "ok": ok, "why": why}))
    return ok, why


def resolve(wanted: Accel, kernel: Kernel, emulator: Path) -> Accel:
    if wanted is Accel.TCG:
        return Accel.TCG
    ok, why = probe_kvm(kernel, emulator)
    if wanted is Accel.KVM and not ok:
        raise UserError(f"accelerator kvm requested but {why}; use `accelerator: tcg` or `auto`")
    return Accel.KVM if ok else Accel.TCG
