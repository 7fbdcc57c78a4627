"""A stack's network, rootless: one user namespace and one bridge per stack, held by a process.

The holder (a small process started by :func:`create`, detached from whoever started it) owns the
stack's user namespace (the caller as root, or the caller's subordinate ids where newuidmap
allows) and a network namespace with the bridge ``pbr0`` at ``gateway``. Each service's container
joins that user namespace and gets a network namespace of its own, linked to the bridge by a veth
pair, its ``eth0`` at the address :func:`allocate` chose. Two services may listen on one port.
Nothing routes beyond the bridge unless a service has ``outbound``.

Every stack uses the same subnet (:data:`SUBNET`): each bridge lives in its own network
namespace, so two stacks never see each other's addresses, and the host's routes never see any.
The launcher's half (joining a container to the bridge) is ``pbuild.tools.launcher.join``;
:func:`join_record` builds the record it takes.

Trust: every service of a stack is root in the stack's one user namespace, so a service could
reconfigure the stack's bridge; that namespace holds nothing of the host's, and stacks are
separate from each other. The boundary is the stack, as with a Compose project's network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from pbuild.lib import atomicio
from pbuild.tools.launcher import identity
from pbuild.tools.launcher.join import BRIDGE, HOLDER_NAME
from pbuild.tools.launcher.netlink import Netlink
from pbuild.tools.launcher.state import process_start_time
from pbuild.tools.sandbox import linux
from pbuild.tools.stack.errors import StackError

if TYPE_CHECKING:
    from pbuild.tools.launcher.config import NetworkJoin

SUBNET = "10.89.0.0/24"
RECORD = "network.json"
"""The holder's record in the stack's folder: what ``down`` needs after a supervisor crash."""
_READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StackNetwork:
    """A live stack network. ``holder_start`` is the holder's start time (``/proc/PID/stat``
    field 22), so a recycled pid never passes for the holder."""

    holder_pid: int
    holder_start: int
    subnet: str  # e.g. "10.89.3.0/24"
    gateway: str  # the bridge's address, e.g. "10.89.3.1"
    single_map: bool  # the user namespace maps only the caller (no subordinate ids)


def create(stack_dir: str) -> StackNetwork:
    """Start the holder for a stack whose records live in ``stack_dir`` (it must exist), write
    its record there (:data:`RECORD`) and return it once the bridge is up. Every stack gets
    :data:`SUBNET`: the bridges never meet (see the module docstring)."""
    if not os.path.isdir(stack_dir):
        raise StackError(f"the stack's folder {stack_dir} does not exist", hint="create it before the network")
    subnet = ipaddress.IPv4Network(SUBNET)
    gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
    idmap = identity.choose_id_map()
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    middle = os.fork()
    if middle == 0:  # double fork: the holder is nobody's child and outlives its starter
        try:
            os.setsid()
            if os.fork() == 0:
                _holder(report_w, go_r, gateway)
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(go_r)
    os.waitpid(middle, 0)
    holder = 0
    try:
        line = _read_line(report_r)
        if not line.strip().isdigit():
            raise StackError(f"cannot create the stack's network: {_said(line)}")
        holder = int(line)
        start = process_start_time(holder)
        if start is None:
            raise StackError("cannot create the stack's network: its holder process exited")
        from pbuild.tools.launcher.process import write_id_maps

        write_id_maps(holder, idmap)
        os.write(go_w, b"g")
        os.close(go_w)
        go_w = -1
        answer = _read_line(report_r)
        if answer.strip() != b"ok":
            raise StackError(f"cannot create the stack's network: {_said(answer)}")
        network = StackNetwork(holder, start, SUBNET, gateway.partition("/")[0], idmap.single)
        atomicio.write_text(
            os.path.join(stack_dir, RECORD), json.dumps(asdict(network), sort_keys=True) + "\n", mode=0o600
        )
    except BaseException:
        if holder:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)
        raise
    finally:
        os.close(report_r)
        if go_w >= 0:
            os.close(go_w)
    return network


def _read_line(fd: int) -> bytes:
    """One line from the holder, waiting at most :data:`_READY_TIMEOUT_S`; b"" on EOF."""
    line = b""
    while not line.endswith(b"\n"):
        readable, _, _ = select.select([fd], [], [], _READY_TIMEOUT_S)
        if not readable:
            return b"E the holder did not answer within %d s\n" % _READY_TIMEOUT_S
        data = os.read(fd, 1)
        if not data:
            break
        line += data
    return line


def _said(line: bytes) -> str:
    text = line.decode(errors="replace").strip()
    return text.removeprefix("E ") or "its holder process exited"


def _holder(report_w: int, go_r: int, gateway: str) -> None:
    """The holder: new user and network namespaces, the bridge, then sleep until killed."""
    try:
        linux.keep_only_fds([report_w, go_r])
        null = os.open("/dev/null", os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        if null > 2:
            os.close(null)
        os.chdir("/")  # pin no folder of whoever started us
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
            comm.write(HOLDER_NAME.encode())  # `ps` shows what this process is
        try:
            linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNET)
        except OSError as e:
            os.write(report_w, f"E cannot create a user and network namespace: {e}\n".encode())
            return
        os.write(report_w, f"{os.getpid()}\n".encode())
        if os.read(go_r, 1) != b"g":
            return  # the starter could not write our id maps and says why itself
        os.close(go_r)
        try:
            with Netlink() as nl:
                nl.set_link("lo", up=True)
                nl.add_bridge(BRIDGE)
                nl.add_address(BRIDGE, gateway)
                nl.set_link(BRIDGE, up=True)
        except OSError as e:
            os.write(report_w, f"E cannot create the bridge {BRIDGE}: {e}\n".encode())
            return
        os.write(report_w, b"ok\n")
        os.close(report_w)
        linux.capset(0, 0, 0)  # from here on it only sleeps: it keeps no privilege in the namespace
    except BaseException:  # noqa: BLE001 - a forked child: never back into the caller's code
        os._exit(1)
    while True:
        signal.pause()


def _state_of(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return b""
    return data[data.rindex(b")") + 2 :][:1]


def alive(network: StackNetwork) -> bool:
    """Is the holder still the process it was (and not a zombie)?"""
    if process_start_time(network.holder_pid) != network.holder_start:
        return False
    return _state_of(network.holder_pid) not in (b"Z", b"X", b"")


def remove(network: StackNetwork) -> None:
    """End the holder (and with it the bridge and every veth); a holder already gone is fine.
    Returns once it has exited (at most a few seconds)."""
    if not alive(network):
        return
    try:
        pidfd = os.pidfd_open(network.holder_pid)
    except ProcessLookupError:
        return
    try:
        if not alive(network):  # the pid was recycled between the check and the open
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(5000):
            raise StackError(
                f"the stack network's holder (pid {network.holder_pid}) did not exit after SIGKILL"
            )
    finally:
        os.close(pidfd)


def load(stack_dir: str) -> StackNetwork | None:
    """The record :func:`create` wrote in ``stack_dir``; None when there is none. The holder may
    be gone: check with :func:`alive`."""
    path = os.path.join(stack_dir, RECORD)
    try:
        with open(path) as f:
            data = json.load(f)
        return StackNetwork(
            holder_pid=int(data["holder_pid"]), holder_start=int(data["holder_start"]), subnet=str(data["subnet"]),
            gateway=str(data["gateway"]), single_map=bool(data["single_map"]),
        )  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StackError(
            f"the stack's network record {path} is damaged: {e}",
            hint="`pbuild down` the stack and start it again",
        ) from None


def allocate(network: StackNetwork, taken: Collection[str]) -> str:
    """The lowest address of the stack's subnet that is neither the bridge's nor in ``taken``
    (addresses, with or without a prefix), as ``ADDRESS/PREFIX`` for ``NetworkJoin.address``."""
    subnet = ipaddress.IPv4Network(network.subnet)
    used = {ipaddress.IPv4Interface(t).ip for t in taken} | {ipaddress.IPv4Address(network.gateway)}
    for host in subnet.hosts():
        if host not in used:
            return f"{host}/{subnet.prefixlen}"
    raise StackError(f"the stack's network {network.subnet} has no free address left")


def hosts_entries(stack: str, addresses: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """``/etc/hosts`` lines for every service (``addresses``: service name -> its address): the
    address, the service's name and its container name (``<stack>-<service>-1``)."""
    from pbuild.tools.stack.spec import container_name

    return tuple(
        (ipaddress.IPv4Interface(address).ip.compressed, service, container_name(stack, service))
        for service, address in sorted(addresses.items())
    )


def join_record(
    network: StackNetwork, address: str, hosts: tuple[tuple[str, ...], ...], outbound: bool = False
) -> NetworkJoin:
    """The launcher's ``RunOptions.join`` for a service at ``address`` on this network."""
    from pbuild.tools.launcher.config import NetworkJoin

    return NetworkJoin(
        holder_pid=network.holder_pid, holder_start=network.holder_start, address=address,
        gateway=network.gateway, hosts=hosts, outbound=outbound,
    )  # fmt: skip
