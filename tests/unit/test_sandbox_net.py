"""Sandbox networking: address plan, rtnetlink messages, ioctl requests (no root, no VM)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from tbagent.sandbox import net

REPO = Path(__file__).resolve().parents[2]


def test_plan_gives_each_slot_its_own_link_local_30() -> None:
    a, b = net.plan(0, net.POOL_BASE, "tbv"), net.plan(5, net.POOL_BASE, "tbv")
    assert (a.host_if, a.host_ip, a.peer_ip, a.prefix) == ("tbv0", "169.254.64.1", "169.254.64.2", 30)
    assert (b.host_ip, b.peer_ip) == ("169.254.64.21", "169.254.64.22")
    last = net.plan(net.MAX_SLOTS - 1, net.POOL_BASE, "tbv")
    assert last.peer_ip == "169.254.127.254"  # the pool's /18 never reaches the baseline's
    assert net.plan(0, net.OCI_BASE, "tbo").host_ip == "169.254.128.1"


def test_plan_rejects_bad_slots_and_long_names() -> None:
    with pytest.raises(ValueError):
        net.plan(net.MAX_SLOTS, net.POOL_BASE, "tbv")
    with pytest.raises(ValueError):
        net.plan(-1, net.POOL_BASE, "tbv")
    with pytest.raises(ValueError, match="15"):
        net.plan(1, net.POOL_BASE, "a-very-long-nam")


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off < len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out.append((kind, data[off + 4: off + length]))
        off += (length + 3) & ~3
    return out


def test_newveth_message_nests_the_peer_with_its_namespace() -> None:
    msg = net.newveth_msg(7, "tbv3", "eth0", 4242)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and kind == net.RTM_NEWLINK and seq == 7
    assert flags & net.NLM_F_CREATE and flags & net.NLM_F_EXCL and flags & net.NLM_F_ACK
    top = dict(_attrs(msg[16 + 16:]))  # after nlmsghdr and ifinfomsg
    assert top[net.IFLA_IFNAME] == b"tbv3\0"
    info = dict(_attrs(top[net.IFLA_LINKINFO]))
    assert info[net.IFLA_INFO_KIND] == b"veth\0"
    peer = dict(_attrs(info[net.IFLA_INFO_DATA]))[net.VETH_INFO_PEER]
    peer_attrs = dict(_attrs(peer[16:]))
    assert peer_attrs[net.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", peer_attrs[net.IFLA_NET_NS_PID]) == (4242,)
    assert len(msg) % 4 == 0


def test_attributes_are_padded_to_four_bytes() -> None:
    a = net.attr(1, b"abcde")
    assert len(a) == 12 and struct.unpack_from("=H", a) == (9,)


def test_parse_ack_returns_the_errno_of_the_matching_request() -> None:
    def err(seq: int, code: int) -> bytes:
        return struct.pack("=IHHII", 36, net.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", code) + b"\0" * 16

    assert net.parse_ack(err(3, 0), 3) == 0
    assert net.parse_ack(err(2, 0) + err(3, -17), 3) == 17
    with pytest.raises(OSError, match="no netlink"):
        net.parse_ack(err(1, 0), 3)


def test_ifreq_for_an_address_is_a_full_struct_ifreq() -> None:
    req = net._ifreq_addr("eth0", "169.254.64.2")
    assert len(req) == 40  # struct ifreq on 64-bit Linux
    assert req[:5] == b"eth0\0" and struct.unpack_from("H", req, 16) == (socket.AF_INET,)
    assert req[20:24] == socket.inet_aton("169.254.64.2")
