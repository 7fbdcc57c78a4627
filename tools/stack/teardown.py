"""Stopping and removing a stack's containers, network, volumes and records.

Used by the supervisor for ``down`` and for a failed ``up``, and by ``down`` itself when the
supervisor is gone (crashed, killed): then everything is found from the records alone, and every
pid is checked against its recorded start time before it is signalled.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable

from pbuild.tools.launcher.lifecycle import remove_container, stop_containers, wait_pidfds
from pbuild.tools.launcher.state import ContainerState, ContainerStore, is_alive
from pbuild.tools.stack import network, state
from pbuild.tools.stack.state import StackRecord


def containers_of(store: ContainerStore, record: StackRecord) -> list[ContainerState]:
    """The launcher's records of the stack's containers (those that still exist)."""
    found = []
    for service in record.services:
        # An id is 64 hex digits; anything else in a (damaged) record must not become a path.
        if re.fullmatch(r"[0-9a-f]{64}", service.container_id):
            current = store.load(service.container_id)
            if current is not None:
                found.append(current)
    return found


def kill_supervisor(record: StackRecord) -> None:
    """End a supervisor that no longer answers (only if its pid is still that process)."""
    if not state.supervisor_alive(record):
        return
    try:
        fd = os.pidfd_open(record.supervisor_pid)
    except ProcessLookupError:
        return
    try:
        if state.supervisor_alive(record):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            wait_pidfds([fd], 5.0)
    finally:
        os.close(fd)


def remove_stack(
    directory: str,
    record: StackRecord,
    *,
    timeout: float,
    volumes: list[str] | None,
    say: Callable[[str], None],
    store: ContainerStore | None = None,
) -> None:
    """Stop and remove every container of the stack, its network, with ``volumes`` those named
    volumes, and its folder. Compose's words in ``say``."""
    from pbuild.tools.fstree import remove_tree

    store = store or ContainerStore()
    containers = containers_of(store, record)
    for c in containers:
        if is_alive(c):
            say(f"Container {c.name}  Stopping")
    stop_containers(store, containers, timeout)
    for c in containers:
        remove_container(store, store.load(c.id) or c)
        say(f"Container {c.name}  Removed")
    net = network.load(directory)
    if net is not None:
        network.remove(net)
        say(f"Network {record.name}_default  Removed")
    if volumes:
        for name in state.remove_volumes(record.name, volumes):
            say(f"Volume {name}  Removed")
    if os.path.lexists(directory):
        remove_tree(directory)


def volumes_of(directory: str) -> list[str]:
    """The named volumes of the applied spec (``spec.json``), for ``down -v``."""
    from pbuild.tools.stack.spec import from_json

    try:
        with open(os.path.join(directory, state.SPEC_FILE), "rb") as f:
            applied = from_json(f.read())
    except OSError:
        return []
    return sorted({v.source for s in applied.services for v in s.volumes if v.kind == "volume"})
