"""Accelerator choice. KVM is detected by trying: /dev/kvm can exist and accept
KVM_CREATE_VM while guests still die in early boot (as on this project's machines), and a
guest that boots can still stop on CXL memory that QEMU serves as MMIO (KVM cannot emulate
vector instructions on MMIO). So the probe boots Debian's kernel under KVM with a CXL Type-3
device on the emulator the testbed will run, commits a region, and touches it with SSE2 and
AVX2 loads and stores; `auto` picks KVM only if all of that works."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from testbed import paths
from testbed.artifacts.kernel import Kernel
from testbed.config.topology import Accel, KernelKind
from testbed.errors import CommandError, UserError
from testbed.hostcmd import run

MARKER = "CXLTB-PROBE-OK"
CXL_MARKER = "CXLTB-PROBE-CXL-OK"
CXL_FAIL = "CXLTB-PROBE-CXL-FAIL"
CPU = {"kvm": "host,hypervisor=off", "tcg": "max,hypervisor=off"}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_argv(kernel: Kernel, emulator: Path, accel: str) -> list[str]:
    """Boot the probe initramfs with one CXL Type-3 device behind a single-target window."""
    return [str(emulator), "-accel", accel, "-machine", "q35,cxl=on", "-cpu", CPU[accel],
            "-m", "512M,maxmem=2G,slots=1", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.probe_initramfs),
            "-append", "console=ttyS0 cxltb.probe=cxl panic=-1 loglevel=4",
            "-object", "memory-backend-ram,id=probe-mem,size=256M,share=on",
            "-device", "pxb-cxl,bus_nr=64,bus=pcie.0,id=probe-cxl",
            "-device", "cxl-rp,port=0,bus=probe-cxl,id=probe-rp,chassis=100,slot=0",
            "-device", "cxl-type3,bus=probe-rp,volatile-memdev=probe-mem,id=probe-vmem,sn=1",
            "-M", "cxl-fmw.0.targets.0=probe-cxl,cxl-fmw.0.size=4G"]


def probe(kernel: Kernel, emulator: Path, accel: str, timeout: float) -> tuple[bool, str]:
    """(works, why): the guest boots under accel and uses CXL memory with vector instructions."""
    t0 = time.monotonic()
    try:
        out = run(probe_argv(kernel, emulator, accel), check=False, timeout=timeout).stdout or ""
    except CommandError:
        return False, f"guest did not finish booting under {accel} within {timeout:.0f}s"
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if MARKER not in out:
        return False, f"guest did not boot under {accel}: " + (lines[-1] if lines else "no output")[:160]
    if CXL_MARKER not in out:
        why = next((ln for ln in lines if CXL_FAIL in ln), lines[-1] if lines else "no output")
        return False, f"guest booted under {accel} but could not use CXL memory: {why[:160]}"
    return True, f"guest booted under {accel} and used CXL memory with vector loads and stores " \
                 f"in {time.monotonic() - t0:.1f}s"


def probe_kvm(emulator: Path, timeout: float = 90.0) -> tuple[bool, str]:
    """The KVM probe, cached per boot, probe kernel and emulator."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    from testbed.artifacts import kernel as kernel_mod

    kern = kernel_mod.resolve(KernelKind.DEBIAN)
    cache = paths.cache_root() / "kvm-probe.json"
    key = {"boot_id": _boot_id(), "kernel": str(kern.directory), "emulator": str(emulator)}
    try:
        data = json.loads(cache.read_text())
        if all(data.get(k) == v for k, v in key.items()):
            return bool(data["ok"]), str(data["why"])
    except (OSError, ValueError, KeyError):
        pass
    ok, why = probe(kern, emulator, "kvm", timeout)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**key, "ok": ok, "why": why}))
    return ok, why


def resolve(wanted: Accel, emulator: Path) -> Accel:
    if wanted is Accel.TCG:
        return Accel.TCG
    ok, why = probe_kvm(emulator)
    if wanted is Accel.KVM and not ok:
        raise UserError(f"accelerator kvm requested but {why}; use `accelerator: tcg` or `auto`")
    return Accel.KVM if ok else Accel.TCG
