"""Sandbox networking: a veth pair per sandbox with a link-local /30, made without spawning `ip`.

The veth pair is created with one rtnetlink message (the peer goes straight into the sandbox's
network namespace by PID); addresses and link state are set with the classic ioctls, the inside
end from a thread that has joined the sandbox's namespace with setns(2). Nothing is routed: the
node has no forwarding, so a sandbox reaches only its own /30 peer on the node.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tbagent.sandbox import linux

POOL_BASE = "169.254.64.0"    # pool sandboxes: 169.254.64.0/18, one /30 per slot
OCI_BASE = "169.254.128.0"    # crun baseline: 169.254.128.0/18
MAX_SLOTS = 4096
PEER_IF = "eth0"

# rtnetlink
NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK = 16, 17
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFLA_IFNAME, IFLA_LINKINFO, IFLA_NET_NS_PID = 3, 18, 19
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1

# ioctls
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGIFADDR, SIOCSIFADDR = 0x8915, 0x8916
SIOCSIFNETMASK = 0x891C
SIOCGIFMTU, SIOCSIFMTU = 0x8921, 0x8922
IFF_UP = 0x1


@dataclass(frozen=True)
class Link:
    host_if: str
    host_ip: str
    peer_ip: str
    prefix: int = 30
    peer_if: str = PEER_IF


def plan(slot: int, base: str, host_prefix: str) -> Link:
    """Slot N of a /18 of link-local /30s: .1 on the node's end, .2 in the sandbox."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"slot {slot} out of range 0..{MAX_SLOTS - 1}")
    net = ipaddress.IPv4Address(base) + 4 * slot
    name = f"{host_prefix}{slot}"
    if len(name) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 characters")
    return Link(name, str(net + 1), str(net + 2))


# --- rtnetlink -----------------------------------------------------------------------------

def _pad(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (_pad(length) - length)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def newveth_msg(seq: int, name: str, peer: str, peer_pid: int) -> bytes:
    peer_info = _ifinfo() + attr(IFLA_IFNAME, peer.encode() + b"\0") + attr(IFLA_NET_NS_PID, struct.pack("=I", peer_pid))
    linkinfo = attr(IFLA_INFO_KIND, b"veth\0") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info))
    body = _ifinfo() + attr(IFLA_IFNAME, name.encode() + b"\0") + attr(IFLA_LINKINFO, linkinfo)
    return _msg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, body)


def dellink_msg(seq: int, name: str) -> bytes:
    return _msg(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, _ifinfo() + attr(IFLA_IFNAME, name.encode() + b"\0"))


def parse_ack(data: bytes, seq: int) -> int:
    """The errno of the NLMSG_ERROR answering `seq` (0 = success)."""
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
        if kind == NLMSG_ERROR and mseq == seq:
            (err,) = struct.unpack_from("=i", data, off + 16)
            return -int(err)
        off += _pad(length)
    raise OSError(f"no netlink acknowledgement for request {seq}")


def _rtnl(msg: bytes, seq: int, what: str) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
        s.bind((0, 0))
        s.send(msg)
        err = parse_ack(s.recv(65536), seq)
    if err:
        raise OSError(err, f"{what}: {os.strerror(err)}")


def create_veth(name: str, peer: str, peer_pid: int) -> None:
    _rtnl(newveth_msg(1, name, peer, peer_pid), 1, f"create veth {name}")


def delete_link(name: str) -> None:
    try:
        _rtnl(dellink_msg(1, name), 1, f"delete link {name}")
    except OSError as exc:
        if exc.errno != 19:  # ENODEV: already gone (its namespace died)
            raise


# --- ioctls --------------------------------------------------------------------------------

def _ifreq_addr(name: str, addr: str) -> bytes:
    return struct.pack("16sH2s4s16x", name.encode(), socket.AF_INET, b"", socket.inet_aton(addr))


def set_addr(name: str, addr: str, prefix: int) -> None:
    mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFADDR, _ifreq_addr(name, addr))
        fcntl.ioctl(s, SIOCSIFNETMASK, _ifreq_addr(name, mask))


def get_addr(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            out = fcntl.ioctl(s, SIOCGIFADDR, struct.pack("16s24x", name.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(out[20:24])


def is_up(name: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        out = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16s24x", name.encode()))
    (flags,) = struct.unpack_from("H", out, 16)
    return bool(flags & IFF_UP)


def get_mtu(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        out = fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16s24x", name.encode()))
    return int(struct.unpack_from("i", out, 16)[0])


def set_mtu(name: str, mtu: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si20x", name.encode(), mtu))


def set_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        out = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16s24x", name.encode()))
        (flags,) = struct.unpack_from("H", out, 16)
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))


@contextlib.contextmanager
def netns_of(pid: int) -> Iterator[None]:
    """Run the block in the network namespace of `pid` (this thread only), then come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        linux.setns(target, linux.CLONE_NEWNET)
        try:
            yield
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def attach(pid: int, link: Link) -> None:
    """Create the pair with its peer in pid's namespace, address both ends, bring them (and lo) up."""
    create_veth(link.host_if, link.peer_if, pid)
    set_addr(link.host_if, link.host_ip, link.prefix)
    set_up(link.host_if)
    with netns_of(pid):
        set_up("lo")
        set_addr(link.peer_if, link.peer_ip, link.prefix)
        set_up(link.peer_if)


def stale_links(prefixes: tuple[str, ...]) -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(prefixes))
