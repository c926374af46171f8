"""The Linux system calls Python 3.11's standard library lacks, through ctypes."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SANDBOX_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else s.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(libc().umount2(_b(target), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc().setns(fd, nstype), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc().sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _PIVOT_ROOT[os.uname().machine]
    _check(libc().syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg: int | bytes) -> None:
    _check(libc().prctl(option, arg, 0, 0, 0), "prctl")


def set_name(name: str) -> None:
    """The process name shown by ps (comm), at most 15 bytes."""
    prctl(PR_SET_NAME, name.encode()[:15])


# --- the new mount API (Linux 5.2+): a mount made ahead, detached, attached later ---------------
_SYSCALLS = {  # x86_64 and aarch64 share the numbers of these newer calls
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
}
FSOPEN_CLOEXEC = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x2, 0x4, 0x8
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100


def _syscall(name: str, *args: int | bytes | None) -> int:
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = int(libc().syscall(ctypes.c_long(_SYSCALLS[name]), *conv))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def detached_mount(fstype: str, attrs: int = 0) -> int:
    """A new, not yet attached mount of `fstype` (with default options); returns its fd. Its
    superblock is made now, with the caller's namespaces (a cgroup2 one is rooted at the caller's
    cgroup namespace)."""
    fs = _syscall("fsopen", fstype.encode(), FSOPEN_CLOEXEC)
    try:
        _syscall("fsconfig", fs, FSCONFIG_CMD_CREATE, None, None, 0)
        return _syscall("fsmount", fs, FSMOUNT_CLOEXEC, attrs)
    finally:
        os.close(fs)


def attach_mount(fd: int, target: str) -> None:
    """Attach a detached mount (from detached_mount) at target, in the caller's mount namespace."""
    _syscall("move_mount", fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
