"""A stack's network, rootless: one user namespace and one bridge per stack, held by a process.

The holder (a small process started by :func:`create`, detached from whoever started it) owns the
stack's user namespace (the caller as root, or the caller's subordinate ids where newuidmap
allows) and a network namespace with the bridge ``pbr0`` at ``gateway``. Each service's container
joins that user namespace and gets a network namespace of its own, linked to the bridge by a veth
pair, its ``eth0`` at the address :func:`allocate` chose. Two services may listen on one port.
Nothing routes beyond the bridge unless a service has ``outbound``.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """Start the holder for a stack whose records live in ``stack_dir``; pick a subnet no other
    live stack of this user uses."""
    raise NotImplementedError  # contract: the network helper implements it


def alive(network: StackNetwork) -> bool:
    """Is the holder still the process it was?"""
    raise NotImplementedError  # contract: the network helper implements it


def remove(network: StackNetwork) -> None:
    """End the holder (and with it the bridge and every veth); a holder already gone is fine."""
    raise NotImplementedError  # contract: the network helper implements it
