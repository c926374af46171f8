"""libvirt daemons and connections. Where no service manager runs, the toolkit starts
virtlogd and libvirtd itself (they are host services, so they are left running)."""

from __future__ import annotations

import contextlib
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt

from testbed.errors import UserError
from testbed.hostcmd import run
from testbed.lifecycle.hostsetup import require_root

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")


def _quiet(_ctx: object, _err: object) -> None:
    # libvirt-python prints every error to stderr by default; we raise typed errors instead.
    return None


libvirt.registerErrorHandler(_quiet, None)


def _answers() -> bool:
    try:
        libvirt.open(URI).close()
        return True
    except libvirt.libvirtError:
        return False


def ensure_running(timeout: float = 30.0) -> None:
    # /dev/kvm's permissions are `testbed setup`'s business (hostsetup.py), never a side effect.
    if _answers():
        return
    require_root("starting libvirtd", f"libvirt's system instance ({URI}) is not answering")
    if Path("/run/systemd/system").is_dir():
        run(["systemctl", "start", "virtlogd.socket", "libvirtd.socket"], check=False)
    else:
        for daemon in ("virtlogd", "libvirtd"):
            if run(["pgrep", "-x", daemon], check=False).returncode != 0:
                run([f"/usr/sbin/{daemon}", "-d"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers():
            return
        time.sleep(0.2)
    raise UserError(f"libvirtd does not answer on {URI}; run `testbed doctor` for the fix")


@contextlib.contextmanager
def connection() -> Iterator[libvirt.virConnect]:
    ensure_running()
    conn = libvirt.open(URI)
    try:
        yield conn
    finally:
        conn.close()


def qemu_user() -> tuple[int, int]:
    """uid/gid QEMU runs as under libvirt (Debian: libvirt-qemu); root where it is absent."""
    try:
        pw = pwd.getpwnam("libvirt-qemu")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 0, 0
