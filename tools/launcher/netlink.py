"""The few rtnetlink requests a stack's network needs: a bridge, a veth pair whose peer lands in
another network namespace, a link's master and up flag, an IPv4 address.

Written by hand over ``socket.AF_NETLINK`` and ``struct`` because the alternatives cost more than
they give here: pyroute2 takes about 0.26 s to import, more than a whole stack's start budget,
and running iproute2's ``ip`` means a process (and entering namespaces) per step. The requests
below are the kernel's stable uAPI (``linux/rtnetlink.h``, ``linux/if_link.h``,
``linux/veth.h``, ``linux/if_addr.h``); each is sent with ``NLM_F_ACK`` and its acknowledgement
checked, so a failure raises :class:`NetlinkError` naming the request and the errno.

A :class:`Netlink` socket talks to the network namespace it was opened in, whatever namespace
its process moves to later: that is how one process configures both ends of a veth pair.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0

NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4

IFF_UP = 0x1
IFNAMSIZ = 16

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBi")  # family, prefix length, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type


class NetlinkError(OSError):
    """A request the kernel refused: the message names it, ``errno`` says why."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One ``rtattr``: header, payload, padding to 4 bytes (the length excludes the padding)."""
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def name_attr(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw:
        raise ValueError(f"invalid interface name {name!r} (1 to {IFNAMSIZ - 1} bytes, no '/')")
    return attr(IFLA_IFNAME, raw + b"\0")


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message: ``nlmsghdr`` then ``body`` (already aligned)."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def bridge_request(name: str) -> bytes:
    """The body of RTM_NEWLINK for a bridge called ``name``."""
    return ifinfo() + name_attr(name) + nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"bridge"))


def veth_request(name: str, peer: str, peer_netns_fd: int, mac: bytes | None = None) -> bytes:
    """The body of RTM_NEWLINK for a veth pair: ``name`` here (with the hardware address
    ``mac`` if given), ``peer`` in the namespace of ``peer_netns_fd``. The peer is described by
    its own ``ifinfomsg`` and attributes, nested in ``IFLA_INFO_DATA`` / ``VETH_INFO_PEER``
    (``linux/veth.h``)."""
    peer_body = ifinfo() + name_attr(peer) + attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    kind = attr(IFLA_INFO_KIND, b"veth")
    data = nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer_body))
    own = b""
    if mac is not None:
        if len(mac) != 6:
            raise ValueError(f"a hardware address has 6 bytes, not {len(mac)}")
        own = attr(IFLA_ADDRESS, mac)
    return ifinfo() + name_attr(name) + own + nested(IFLA_LINKINFO, kind, data)


def link_request(name: str, up: bool | None = None, master: int | None = None) -> bytes:
    """The body of RTM_NEWLINK changing link ``name`` (found by name): its up flag, its master."""
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    body = ifinfo(0, flags, change) + name_attr(name)
    if master is not None:
        body += attr(IFLA_MASTER, struct.pack("=I", master))
    return body


def address_request(index: int, cidr: str) -> bytes:
    """The body of RTM_NEWADDR for the IPv4 ``cidr`` ("10.89.0.3/24") on link ``index``; the
    kernel adds the route to the subnet itself."""
    iface = ipaddress.IPv4Interface(cidr)
    packed = iface.ip.packed
    body = _IFADDRMSG.pack(socket.AF_INET, iface.network.prefixlen, 0, 0, index)
    body += attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    if iface.network.prefixlen < 31:
        body += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    return body


def parse_messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """The (type, sequence, payload) of each message in one datagram from the kernel."""
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise NetlinkError(errno.EBADMSG, "truncated netlink message from the kernel")
        out.append((kind, seq, data[offset + _NLMSGHDR.size : offset + length]))
        offset += _align(length)
    return out


def error_code(payload: bytes) -> int:
    """The errno in an NLMSG_ERROR payload (0 is an acknowledgement)."""
    (code,) = struct.unpack_from("=i", payload)
    return -int(code)


class Netlink:
    """An rtnetlink socket bound to the network namespace the caller is in now."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> list[bytes]:
        """Send one request and read until its acknowledgement; return the payloads of the
        other messages answering it (RTM_GETLINK's reply)."""
        self.seq += 1
        seq = self.seq
        self.sock.send(message(kind, flags | NLM_F_ACK, seq, body))
        replies = []
        while True:
            data = self.sock.recv(65536)
            for reply_kind, reply_seq, payload in parse_messages(data):
                if reply_seq != seq:
                    continue
                if reply_kind != NLMSG_ERROR:
                    replies.append(payload)
                    continue
                code = error_code(payload)
                if code:
                    raise NetlinkError(code, f"{what}: {errno.errorcode.get(code, '?')}: {os.strerror(code)}")
                return replies

    def add_bridge(self, name: str) -> None:
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, bridge_request(name), f"create bridge {name}")

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, mac: bytes | None = None) -> None:
        """A veth pair: ``name`` in this socket's namespace, ``peer`` in ``peer_netns_fd``'s."""
        self.request(
            RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, veth_request(name, peer, peer_netns_fd, mac),
            f"create veth {name} (peer {peer})",
        )  # fmt: skip

    def link_index(self, name: str) -> int:
        replies = self.request(RTM_GETLINK, 0, ifinfo() + name_attr(name), f"find link {name}")
        for payload in replies:
            index: int = _IFINFOMSG.unpack_from(payload)[2]
            return int(index)
        raise NetlinkError(errno.ENODEV, f"find link {name}: no answer")

    def set_link(self, name: str, up: bool | None = None, master: str | None = None) -> None:
        """Bring ``name`` up (or down), and/or enslave it to the bridge ``master``."""
        master_index = self.link_index(master) if master is not None else None
        what = f"set link {name}" + (f" master {master}" if master else "") + (" up" if up else "")
        self.request(RTM_NEWLINK, 0, link_request(name, up, master_index), what)

    def add_address(self, name: str, cidr: str) -> None:
        index = self.link_index(name)
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            address_request(index, cidr),
            f"add address {cidr} to {name}",
        )
