"""Stopping and removing a stack's containers, network, volumes and records.

Used by the supervisor for ``down`` and for a failed ``up``, and by ``down`` itself when the
supervisor is gone (crashed, killed): then everything is found from the records alone, and every
pid is checked against its recorded start time before it is signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import time
from collections.abc import Callable, Iterable

from pbuild.tools.launcher.lifecycle import remove_container
from pbuild.tools.launcher.state import ContainerState, ContainerStore, is_alive, process_start_time
from pbuild.tools.stack import network, state
from pbuild.tools.stack.state import StackRecord

_MONITOR_GRACE_S = 2.0


def stop_containers(store: ContainerStore, states: Iterable[ContainerState], timeout: float) -> None:
    """SIGTERM to each container's init at once, SIGKILL to those still running after
    ``timeout`` seconds; return once each has ended and its monitor recorded the exit."""
    live = [s for s in states if is_alive(s)]
    pidfds: list[tuple[ContainerState, int]] = []
    for s in live:
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(s.pid)
            if process_start_time(s.pid) == s.pid_start:  # not recycled between the check and the open
                signal.pidfd_send_signal(fd, signal.SIGTERM)
                pidfds.append((s, fd))
            else:
                os.close(fd)
    try:
        _wait_all([fd for _, fd in pidfds], timeout)
        for _, fd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        _wait_all([fd for _, fd in pidfds], 10.0)
    finally:
        for _, fd in pidfds:
            os.close(fd)
    # The monitor writes the exit into the container's record: wait a moment for it, so that a
    # removal does not race with that write.
    deadline = time.monotonic() + _MONITOR_GRACE_S
    for s, _ in pidfds:
        while time.monotonic() < deadline:
            current = store.load(s.id)
            if current is None or current.status != "running":
                break
            time.sleep(0.01)


def _wait_all(pidfds: list[int], timeout: float) -> None:
    poller = select.poll()
    waiting = set(pidfds)
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for fd, _ in poller.poll(int(left * 1000) + 1):
            waiting.discard(fd)
            poller.unregister(fd)


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
            _wait_all([fd], 5.0)
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
