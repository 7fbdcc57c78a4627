"""A container that joins a stack's network (``RunOptions.join``): the launcher's half.

In the launcher, before the fork, :func:`open_holder` opens the holder's user and network
namespaces and only then checks that the pid is still the holder recorded (start time, and the
holder's name): a recycled pid never lends its namespaces. In the monitor, :func:`enter` joins
the holder's user namespace (mapped already: no id maps are written), opens a netlink socket in
the holder's network namespace, unshares a network namespace of its own and, talking to both
namespaces through their sockets, creates the veth pair (``eth0`` here, ``v<id>`` on the bridge),
puts the address on ``eth0`` and brings the links up. The kernel adds the route to the subnet;
there is no default route (slirp4netns adds one for ``outbound``). The veth ends with the
container's network namespace, so nothing is left on the bridge when it exits.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import NamedTuple

from pbuild.tools.launcher.config import NetworkJoin
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.launcher.netlink import Netlink
from pbuild.tools.launcher.state import process_start_time
from pbuild.tools.sandbox import linux

BRIDGE = "pbr0"
"""The stack's bridge, in the holder's network namespace."""
HOLDER_NAME = "pbuild-stacknet"
"""The holder's process name (``/proc/PID/comm``), checked before its namespaces are joined."""

_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")


class Holder(NamedTuple):
    """The holder's namespaces, open in the launcher (close-on-exec fds)."""

    user_fd: int
    net_fd: int
    single_map: bool

    def close(self) -> None:
        for fd in (self.user_fd, self.net_fd):
            os.close(fd)


def validate(join: NetworkJoin) -> None:
    """Refuse a join record that would put garbage into ``/etc/hosts`` or the address."""
    try:
        address = ipaddress.IPv4Interface(join.address)
        ipaddress.IPv4Address(join.gateway)
    except ValueError as e:
        raise LauncherError(f"invalid stack network address: {e}", hint='use e.g. "10.89.0.3/24"') from None
    if address.network.prefixlen == 32 or address.ip in (
        address.network.network_address,
        address.network.broadcast_address,
    ):
        raise LauncherError(f"invalid stack network address {join.address}: not a host address of its subnet")
    if str(address.ip) == join.gateway:
        raise LauncherError(f"invalid stack network address {join.address}: it is the bridge's own")
    for entry in join.hosts:
        if len(entry) < 2:
            raise LauncherError(f"invalid /etc/hosts entry {entry!r}: an address and at least one name")
        try:
            ipaddress.ip_address(entry[0])
        except ValueError:
            raise LauncherError(
                f"invalid /etc/hosts entry {entry!r}: {entry[0]!r} is not an address"
            ) from None
        for name in entry[1:]:
            if not _HOST_NAME.match(name):
                raise LauncherError(
                    f"invalid /etc/hosts entry {entry!r}: {name!r} is not a host name",
                    hint="letters, digits, '.', '-' and '_'",
                )


def hosts_lines(join: NetworkJoin, hostname: str) -> str:
    """The container's own address under its hostname, then every entry of ``join.hosts``."""
    own = ipaddress.IPv4Interface(join.address).ip
    lines = [f"{own}\t{hostname}"]
    lines += ["\t".join((entry[0], " ".join(entry[1:]))) for entry in join.hosts]
    return "\n".join(lines) + "\n"


def mac_for(address: str) -> bytes:
    """``eth0``'s hardware address, made from its IPv4 address as Docker does (02:42 and the four
    bytes; locally administered): a service recreated at its address keeps its MAC, so the other
    services' neighbour caches stay right instead of pointing at the old veth for seconds."""
    return b"\x02\x42" + ipaddress.IPv4Interface(address).ip.packed


def open_holder(join: NetworkJoin) -> Holder:
    pid = join.holder_pid
    gone = LauncherError(
        f"the stack's network is gone (its holder, pid {pid}, is no longer running)",
        hint="bring the stack down and up again",
    )
    fds: list[int] = []
    try:
        for ns in ("user", "net"):
            fds.append(os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
        with open(f"/proc/{pid}/uid_map") as f:
            uid_map = f.read()
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except PermissionError:
        for fd in fds:
            os.close(fd)
        raise LauncherError(
            f"cannot join the stack's network: its holder (pid {pid}) belongs to another user",
            hint="start the stack as the user who created it",
        ) from None
    except OSError:
        for fd in fds:
            os.close(fd)
        raise gone from None
    # Checked after the open: the fds now pin the namespaces of the process we verified.
    if process_start_time(pid) != join.holder_start or comm != HOLDER_NAME:
        for fd in fds:
            os.close(fd)
        raise gone
    lines = [line.split() for line in uid_map.splitlines() if line.strip()]
    single = len(lines) == 1 and lines[0][2] == "1"
    return Holder(fds[0], fds[1], single)


def enter(join: NetworkJoin, holder: Holder, container_id: str) -> None:
    """In the monitor: the holder's user namespace, then a network namespace of our own on the
    holder's bridge (see the module docstring). Raises OSError naming the failed step."""
    linux.setns(holder.user_fd, linux.CLONE_NEWUSER, "the stack's user namespace")
    linux.setns(holder.net_fd, linux.CLONE_NEWNET, "the stack's network namespace")
    with Netlink() as bridge:  # bound to the holder's namespace from here on
        linux.unshare(linux.CLONE_NEWNET)
        with Netlink() as own:
            peer = f"v{container_id[:12]}"
            own.add_veth("eth0", peer, holder.net_fd, mac_for(join.address))
            bridge.set_link(peer, up=True, master=BRIDGE)
            own.add_address("eth0", join.address)
            own.set_link("eth0", up=True)
            own.set_link("lo", up=True)
    holder.close()
