"""What needs root, and the one explicit change to the host (`testbed setup`).

Nothing else changes host device permissions: `doctor` only reports what `setup` would do."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import UserError

KVM_NODE = Path("/dev/kvm")
KVM_MODE = 0o660  # Debian's udev rule: root:kvm 0660


class NeedsRoot(UserError):
    """One line naming what needs root; exit code 2 like every UserError."""

    def __init__(self, action: str, why: str) -> None:
        super().__init__(f"{action} needs root: {why}; run it with sudo")


def require_root(action: str, why: str, euid: int | None = None) -> None:
    if (os.geteuid() if euid is None else euid) != 0:
        raise NeedsRoot(action, why)


@dataclass(frozen=True)
class Change:
    """One change `setup` makes: what, from what, to what, and why."""

    path: Path
    before: str
    after: str
    why: str

    def describe(self) -> str:
        return f"{self.path}: {self.before} -> {self.after} ({self.why})"


def _owner(uid: int, gid: int, mode: int) -> str:
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{'root' if uid == 0 else uid}:{group} {mode:04o}"


def kvm_node_change(node: Path = KVM_NODE, kvm_gid: int | None = None) -> Change | None:
    """/dev/kvm without Debian's udev permissions (no udev ran, as in containers): libvirt
    probes QEMU as root (KVM found) but checks its cache as the QEMU user, who cannot open
    the node, so the capabilities never validate and every domain start re-probes QEMU for
    about 80 s. None when the node is absent, fine, or there is no kvm group."""
    try:
        gid = grp.getgrnam("kvm").gr_gid if kvm_gid is None else kvm_gid
        st = node.stat()
    except (KeyError, OSError):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_gid == gid and st.st_uid == 0 and mode == KVM_MODE:
        return None
    return Change(node, _owner(st.st_uid, st.st_gid, mode), _owner(0, gid, KVM_MODE),
                  "libvirt's QEMU user must open it, or every domain start re-probes QEMU for about 80 s")


def planned() -> list[Change]:
    return [c for c in (kvm_node_change(),) if c is not None]


def apply(changes: list[Change]) -> None:
    for change in changes:
        if change.path == KVM_NODE:
            os.chown(change.path, 0, grp.getgrnam("kvm").gr_gid)
            change.path.chmod(KVM_MODE)


def setup(say: Callable[[str], None], euid: int | None = None, changes: list[Change] | None = None,
          apply_changes: Callable[[list[Change]], None] = apply) -> int:
    """`testbed setup`: say each change, then make it. Idempotent: a second run changes nothing."""
    require_root("testbed setup", "it changes host device permissions", euid)
    todo = planned() if changes is None else changes
    if not todo:
        say("testbed setup: the host is set up; nothing to change")
        return 0
    for change in todo:
        say(f"testbed setup: changing {change.describe()}")
    apply_changes(todo)
    return 0
