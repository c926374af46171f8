"""One `up` or `down` of a testbed name at a time, across processes.

Without it a second `testbed up` (or `run`, or a pytest session) of the same name sweeps the
objects a first one is still creating. The lock is an flock on a file under the state root
but outside the testbed's own directory, which `down` removes while it holds the lock. The
holder's pid is written into the file so a refused caller can say who is in the way; flock
is released by the kernel when the holder dies, so a crash never leaves a stale lock."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testbed import paths
from testbed.errors import UserError
from testbed.lifecycle import owner
from testbed.lifecycle.hostsetup import NeedsRoot


def lock_path(testbed: str) -> Path:
    return paths.state_root() / "locks" / f"{testbed}.lock"


def _holder(fd: int) -> str:
    """The pid the holder wrote, or a word saying it is not known yet (it may not have written it)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"


@contextmanager
def testbed_lock(testbed: str) -> Iterator[None]:
    """Hold the testbed's lock for the body; raise UserError at once if another process has it."""
    path = lock_path(testbed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        # Not a traceback: the state root (and libvirt's system instance after it) is root's.
        raise NeedsRoot(f"testbed up/down of {testbed}",
                        f"{path.parent} and libvirt's system instance belong to root") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise UserError(f"testbed {testbed} is being brought up or down by another process ({_holder(fd)}, "
                            f"lock {path}); wait for it to finish or stop it") from None
        # Truncate first: a shorter pid must not leave digits of the previous holder's.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # Under the lock, so the state (and its owner) cannot change while this is decided.
        owner.check(testbed, owner.recorded(paths.testbed_dir(testbed) / "state.json"))
        yield
    finally:
        os.close(fd)  # releases the flock
