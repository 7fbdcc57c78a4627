"""The stack network's pure parts: rtnetlink message packing (netlink.py), address allocation and
/etc/hosts entries (network.py), the launcher's checks of a join record (launcher/join.py).
The requests themselves go to a real kernel in tests/e2e/test_stack_network.py."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from pbuild.tools.launcher import join, netlink
from pbuild.tools.launcher.config import NetworkJoin
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.stack import network
from pbuild.tools.stack.errors import StackError


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    """Split a run of rtattrs the way the kernel does (length includes the header, padded to 4)."""
    out = []
    offset = 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        assert length >= 4 and offset + length <= len(data)
        out.append((kind, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    assert offset == len(data)
    return out


def test_an_attribute_is_padded_but_its_length_is_not() -> None:
    assert netlink.attr(3, b"abc") == struct.pack("=HH", 7, 3) + b"abc\0"
    assert netlink.attr(3, b"abcd") == struct.pack("=HH", 8, 3) + b"abcd"
    assert netlink.nested(18) == struct.pack("=HH", 4, 18 | netlink.NLA_F_NESTED)


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a\0b"])
def test_interface_names_the_kernel_would_refuse_are_refused_here(name: str) -> None:
    with pytest.raises(ValueError, match="invalid interface name"):
        netlink.name_attr(name)
    assert netlink.name_attr("a" * 15) == netlink.attr(netlink.IFLA_IFNAME, b"a" * 15 + b"\0")


def test_a_veth_request_nests_its_peer_with_the_peers_namespace() -> None:
    body = netlink.veth_request("eth0", "vabc", 7)
    family, index = struct.unpack_from("=B3xi", body)
    assert (family, index) == (socket.AF_UNSPEC, 0)
    (name_kind, name), (info_kind, info) = attrs(body[16:])
    assert (name_kind, name) == (netlink.IFLA_IFNAME, b"eth0\0")
    assert info_kind == netlink.IFLA_LINKINFO | netlink.NLA_F_NESTED
    (kind_kind, kind), (data_kind, data) = attrs(info)
    assert (kind_kind, kind) == (netlink.IFLA_INFO_KIND, b"veth")
    assert data_kind == netlink.IFLA_INFO_DATA | netlink.NLA_F_NESTED
    [(peer_kind, peer)] = attrs(data)
    assert peer_kind == netlink.VETH_INFO_PEER | netlink.NLA_F_NESTED
    assert peer[:16] == netlink.ifinfo()  # the peer's own ifinfomsg comes first
    assert attrs(peer[16:]) == [
        (netlink.IFLA_IFNAME, b"vabc\0"),
        (netlink.IFLA_NET_NS_FD, struct.pack("=I", 7)),
    ]


def test_a_services_mac_follows_its_address() -> None:
    mac = join.mac_for("10.89.0.3/24")
    assert mac == bytes([0x02, 0x42, 10, 89, 0, 3])
    body = netlink.veth_request("eth0", "vabc", 7, mac)
    assert attrs(body[16:])[1] == (netlink.IFLA_ADDRESS, mac)
    with pytest.raises(ValueError, match="6 bytes"):
        netlink.veth_request("eth0", "vabc", 7, b"\x02")


def test_a_link_change_says_which_flags_change() -> None:
    up = netlink.link_request("pbr0", up=True, master=4)
    assert struct.unpack_from("=II", up, 8) == (netlink.IFF_UP, netlink.IFF_UP)
    assert attrs(up[16:])[1] == (netlink.IFLA_MASTER, struct.pack("=I", 4))
    only_master = netlink.link_request("v1", master=4)
    assert struct.unpack_from("=II", only_master, 8) == (0, 0)  # the up flag is left alone


def test_an_address_request_carries_local_address_and_broadcast() -> None:
    body = netlink.address_request(5, "10.89.0.3/24")
    assert struct.unpack_from("=BBBBi", body) == (socket.AF_INET, 24, 0, 0, 5)
    assert attrs(body[8:]) == [
        (netlink.IFA_LOCAL, bytes([10, 89, 0, 3])),
        (netlink.IFA_ADDRESS, bytes([10, 89, 0, 3])),
        (netlink.IFA_BROADCAST, bytes([10, 89, 0, 255])),
    ]


def test_messages_and_errors_from_the_kernel_are_parsed() -> None:
    request = netlink.message(netlink.RTM_NEWLINK, netlink.NLM_F_ACK, 9, netlink.ifinfo())
    assert struct.unpack_from("=IHHII", request) == (32, netlink.RTM_NEWLINK, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, 9, 0)  # fmt: skip
    error = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, 9, 0) + struct.pack("=i", -17) + request[:16]
    ack = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0, 10, 0) + struct.pack("=i", 0) + request[:16]
    parsed = netlink.parse_messages(error + ack)
    assert [(kind, seq) for kind, seq, _ in parsed] == [(netlink.NLMSG_ERROR, 9), (netlink.NLMSG_ERROR, 10)]
    assert [netlink.error_code(payload) for _, _, payload in parsed] == [17, 0]
    with pytest.raises(netlink.NetlinkError, match="truncated"):
        netlink.parse_messages(struct.pack("=IHHII", 99, netlink.NLMSG_ERROR, 0, 1, 0))  # says 99, has 16


NET = network.StackNetwork(1, 2, "10.89.0.0/24", "10.89.0.1", True)


def test_a_network_needs_its_stacks_folder(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="does not exist"):
        network.create(str(tmp_path / "missing"))
    assert network.load(str(tmp_path)) is None
    (tmp_path / network.RECORD).write_text("{}")
    with pytest.raises(StackError, match="is damaged"):
        network.load(str(tmp_path))


def test_addresses_are_allocated_lowest_first_around_what_is_taken() -> None:
    assert network.allocate(NET, []) == "10.89.0.2/24"
    assert network.allocate(NET, ["10.89.0.2/24", "10.89.0.4"]) == "10.89.0.3/24"
    full = [f"10.89.0.{n}" for n in range(2, 255)]
    with pytest.raises(StackError, match="no free address"):
        network.allocate(NET, full)


def test_hosts_entries_name_each_service_and_its_container() -> None:
    entries = network.hosts_entries("web", {"frontend": "10.89.0.3/24", "backend": "10.89.0.2/24"})
    assert entries == (("10.89.0.2", "backend", "web-backend-1"), ("10.89.0.3", "frontend", "web-frontend-1"))
    record = network.join_record(NET, "10.89.0.2/24", entries)
    assert join.hosts_lines(record, "web-backend-1") == (
        "10.89.0.2\tweb-backend-1\n10.89.0.2\tbackend web-backend-1\n10.89.0.3\tfrontend web-frontend-1\n"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": "10.89.0.3"}, "not a host address"),
        ({"address": "10.89.0.0/24"}, "not a host address"),
        ({"address": "banana/24"}, "invalid stack network address"),
        ({"address": "10.89.0.1/24"}, "the bridge's own"),
        ({"hosts": (("10.89.0.2",),)}, "an address and at least one name"),
        ({"hosts": (("10.89.0.2", "evil\n1.2.3.4 bank"),)}, "is not a host name"),
        ({"hosts": (("nowhere", "db"),)}, "is not an address"),
    ],
)
def test_a_join_record_that_would_corrupt_etc_hosts_is_refused(
    change: dict[str, object], message: str
) -> None:
    good = NetworkJoin(1, 2, "10.89.0.3/24", "10.89.0.1", (("10.89.0.2", "db", "st-db-1"),))
    join.validate(good)
    with pytest.raises(LauncherError, match=message):
        join.validate(good._replace(**change))
