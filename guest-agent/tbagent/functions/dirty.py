"""dirty: leaves every kind of state a sandbox must not carry to the next function.

Files in its rootfs, a mount, the hostname, a SysV shared memory segment, a memory peak, the MTU
of its network interface, and a detached background process holding a TCP listener, a UDP
socket and an abstract unix socket.
(Its environment variable LEAK_TOKEN comes from the function's spec, through the sandbox.)"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tbproto.jsontypes import JsonObject

LEAK_FILES = ("/tmp/leak.txt", "/leak-root.txt", "/etc/leak.conf")
LEAK_MOUNT = "/mnt/leak"
LEAK_HOSTNAME = "dirty-leak"
LEAK_ENV = "LEAK_TOKEN"
LEAK_TCP_PORT = 7777
LEAK_UDP_PORT = 7778
LEAK_UNIX = "tbleak"            # abstract: @tbleak in /proc/net/unix
LEAK_SHM_KEY = 0x7B1EA4
LEAK_PROC_NAME = "tbleak-sleeper"
LEAK_MEMORY = 64 << 20
LEAK_MTU = 1280

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret == -1 or (what != "shmget" and ret != 0):
        raise OSError(ctypes.get_errno(), what)


def _sleeper(ready_w: int) -> None:
    """A detached grandchild: holds sockets and sleeps (until the sandbox's cleanup kills it)."""
    os.setsid()
    _libc.prctl(15, LEAK_PROC_NAME.encode(), 0, 0, 0)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", LEAK_TCP_PORT))  # noqa: S104 - the sandbox's own netns
    tcp.listen(4)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", LEAK_UDP_PORT))  # noqa: S104 - the sandbox's own netns
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + LEAK_UNIX)
    unix.listen(1)
    os.write(ready_w, b"1")
    os.close(ready_w)
    while True:
        time.sleep(3600)


def handle(event: JsonObject) -> JsonObject:
    for path in LEAK_FILES:
        with open(path, "w") as fh:
            fh.write("left behind by dirty\n")
    os.makedirs(LEAK_MOUNT, exist_ok=True)
    _check(_libc.mount(b"tmpfs", LEAK_MOUNT.encode(), b"tmpfs", 0, b"size=1m"), "mount")
    with open(f"{LEAK_MOUNT}/inside", "w") as fh:
        fh.write("on a leaked mount\n")
    name = LEAK_HOSTNAME.encode()
    _check(_libc.sethostname(name, len(name)), "sethostname")
    _check(_libc.shmget(LEAK_SHM_KEY, 4096, 0o1000 | 0o600), "shmget")  # IPC_CREAT
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8922, struct.pack("16si20x", b"eth0", LEAK_MTU))  # SIOCSIFMTU
    hog = bytearray(LEAK_MEMORY)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    del hog
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if os.fork() == 0:
            os.closerange(3, w)
            os.closerange(w + 1, 4096)
            _sleeper(w)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    ok = os.read(r, 1) == b"1"
    os.close(r)
    return {"left": True, "sleeper_ready": ok, "env": os.environ.get(LEAK_ENV)}
