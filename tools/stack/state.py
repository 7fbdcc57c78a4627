"""A stack's records under the launcher's runtime directory, and its named volumes.

``RUNTIME/stacks/`` (0700) holds one folder per stack, ``stacks/NAME/`` (0700):

- ``spec.json``: the applied spec (:func:`pbuild.tools.stack.spec.to_json`), written by ``up``;
- ``stack.json``: the :class:`StackRecord` (who supervises it, one
  :class:`ServiceRecord` per service), replaced atomically by its one writer, the supervisor
  (or ``down`` once the supervisor is gone);
- ``network.json``: the network holder's record (``network.py``);
- ``control.sock``: the supervisor's control socket, bound relative to the folder (a unix
  socket path has at most 108 bytes, the runtime directory may be deep);
- ``logs/SERVICE.log``: each service's output, one timestamped line per line (``logs.py``).

``stacks/`` itself is flock()ed while a client decides whether a stack's supervisor must be started
or its remains cleaned up, so two ``up`` never start two supervisors (flock: the kernel releases
it however the holder dies). Named volumes outlive the runtime directory (a tmpfs on most
systems): they live beside the layer store, ``volumes/STACK_VOLUME`` as Compose names them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from pbuild.lib import atomicio
from pbuild.lib.determinism import canonical_json
from pbuild.tools.launcher.dirs import describe_mode, ensure_private_dir
from pbuild.tools.launcher.layerstore import store_root
from pbuild.tools.launcher.state import process_running, runtime_root
from pbuild.tools.stack.errors import StackError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SPEC_FILE = "spec.json"
RECORD_FILE = "stack.json"
SOCKET_FILE = "control.sock"
LOG_DIR = "logs"


@dataclass(frozen=True)
class ServiceRecord:
    """One service as the supervisor last saw it. ``status``: ``created`` (not started yet),
    ``running``, ``restarting`` (waiting out its backoff), ``exited``; ``health``: ``""`` (no
    healthcheck), ``starting``, ``healthy``, ``unhealthy``."""

    name: str
    container_name: str
    address: str  # "10.89.0.N/24": kept across recreations, so the other services' /etc/hosts stay true
    container_id: str = ""
    config_hash: str = ""
    status: str = "created"
    health: str = ""
    exit_code: int | None = None
    restarts: int = 0
    ports: tuple[str, ...] = ()  # "127.0.0.1:18080->8080/tcp", for ps


@dataclass(frozen=True)
class StackRecord:
    """A stack: its name, where it came from (a label or a Compose file), its supervisor
    (pid and start time: a recycled pid never passes for it), its services. The network's
    record is the network module's own (``network.load``)."""

    name: str
    origin: str
    supervisor_pid: int = 0
    supervisor_start: int = 0
    services: tuple[ServiceRecord, ...] = field(default_factory=tuple)

    def service(self, name: str) -> ServiceRecord | None:
        return next((s for s in self.services if s.name == name), None)

    def with_service(self, record: ServiceRecord) -> StackRecord:
        """This record with ``record`` replacing the service of its name (or added)."""
        others = tuple(s for s in self.services if s.name != record.name)
        if self.service(record.name) is None:
            return replace(self, services=(*others, record))
        return replace(self, services=tuple(record if s.name == record.name else s for s in self.services))

    def without_service(self, name: str) -> StackRecord:
        return replace(self, services=tuple(s for s in self.services if s.name != name))

    def to_json(self) -> bytes:
        return canonical_json(asdict(self), ascii_only=True)

    @classmethod
    def from_json(cls, data: bytes) -> StackRecord:
        raw = json.loads(data)
        services = tuple(
            ServiceRecord(**{**s, "ports": tuple(s.get("ports") or ())}) for s in raw.get("services") or ()
        )
        return cls(
            name=raw["name"],
            origin=raw["origin"],
            supervisor_pid=int(raw.get("supervisor_pid") or 0),
            supervisor_start=int(raw.get("supervisor_start") or 0),
            services=services,
        )


def check_name(name: str) -> None:
    """Compose's rule for a project name: lower-case letters, digits, ``-`` and ``_``, starting
    with a letter or digit (it becomes part of container and volume names and of a path)."""
    if not _NAME.match(name):
        raise StackError(
            f"invalid stack name {name!r}",
            hint="use lower-case letters, digits, '-' and '_', starting with a letter or digit",
            exit_code=2,
        )


def stacks_root(runtime: str | None = None) -> str:
    return os.path.join(runtime or runtime_root(), "stacks")


def stack_dir(name: str, runtime: str | None = None) -> str:
    check_name(name)
    return os.path.join(stacks_root(runtime), name)


def ensure_private(path: str) -> str:
    """Create ``path`` 0700 (parents as needed) or refuse one another user could reach."""
    try:
        private = ensure_private_dir(path)
    except OSError as e:
        raise StackError(
            f"cannot create {path}: {e.strerror}", hint="set PBUILD_RUNTIME_DIR to a directory you can write"
        ) from None
    if not private:
        raise StackError(
            f"{path} is not private ({describe_mode(path)})",
            hint="remove it, or set PBUILD_RUNTIME_DIR to a directory of your own",
        )
    return path


@contextlib.contextmanager
def locked(runtime: str | None = None) -> Iterator[None]:
    """Hold the lock of ``stacks/`` itself (every stack of this user; held for short decisions)."""
    root = ensure_private(stacks_root(runtime))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load(directory: str) -> StackRecord | None:
    """The record in ``directory``, or None when there is none (or it is unreadable)."""
    try:
        with open(os.path.join(directory, RECORD_FILE), "rb") as f:
            return StackRecord.from_json(f.read())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save(directory: str, record: StackRecord) -> None:
    atomicio.write_bytes(os.path.join(directory, RECORD_FILE), record.to_json(), mode=0o600)


def all_stacks(runtime: str | None = None) -> list[tuple[str, StackRecord]]:
    """Every stack folder with a readable record, by name."""
    root = stacks_root(runtime)
    found = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(root)):
            if _NAME.match(name):
                record = load(os.path.join(root, name))
                if record is not None:
                    found.append((os.path.join(root, name), record))
    return found


def find_by_origin(origin: str, runtime: str | None = None) -> tuple[str, StackRecord] | None:
    """The stack that ``origin`` (a label or a Compose file's path) brought up, if any."""
    return next(((d, r) for d, r in all_stacks(runtime) if r.origin == origin), None)


def supervisor_alive(record: StackRecord) -> bool:
    """Is the recorded supervisor still that process, and not a zombie? (It is nobody's child:
    an init that reaps slowly would keep an ended supervisor's pid and start time around.)"""
    return record.supervisor_pid > 0 and process_running(record.supervisor_pid, record.supervisor_start)


def volumes_root() -> str:
    """Named volumes: beside the layer store, so they survive a reboot as the images do."""
    return os.path.join(os.path.dirname(store_root()), "volumes")


def volume_dir(stack: str, volume: str) -> str:
    """``volumes/STACK_VOLUME`` (Compose's name for a project's volume)."""
    check_name(stack)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", volume):
        raise StackError(
            f"invalid volume name {volume!r}",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit",
            exit_code=2,
        )
    return os.path.join(volumes_root(), f"{stack}_{volume}")


def ensure_volume(stack: str, volume: str) -> str:
    """The volume's folder, created on first use (the folder of volumes kept 0700)."""
    ensure_private(volumes_root())
    path = volume_dir(stack, volume)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    return path


def remove_volumes(stack: str, volumes: list[str]) -> list[str]:
    """Delete the named volumes of ``stack``; return the names removed."""
    from pbuild.tools.fstree import remove_tree

    removed = []
    for volume in volumes:
        path = volume_dir(stack, volume)
        if os.path.lexists(path):
            remove_tree(path)
            removed.append(f"{stack}_{volume}")
    return removed
