"""Per-container state under the runtime directory, written atomically.

``$PBUILD_RUNTIME_DIR``, else ``/run/pbuild`` for root, else ``$XDG_RUNTIME_DIR/pbuild`` (or
``/tmp/pbuild-UID``), whose ``containers/`` and ``names/`` are kept 0700. Each container has a
directory ``containers/ID/`` holding ``state.json`` (replaced by rename, never rewritten in
place), its overlay ``upper/`` and ``work/`` dirs, the mount point ``rootfs/``, the generated
``/etc`` files, when flattened its copy ``flat/``, and when detached, ``log``. A name is a
symlink ``names/NAME -> ID``, created with one ``symlink(2)``, so two launchers cannot take
one name. The container's init pid is stored with its start time (``/proc/PID/stat`` field 22):
a recycled pid never passes for a live container.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from pbuild.lib import atomicio
from pbuild.lib.determinism import canonical_json
from pbuild.tools.launcher.dirs import describe_mode, ensure_private_dir
from pbuild.tools.launcher.errors import LauncherError, NoSuchContainer


def runtime_root() -> str:
    explicit = os.environ.get("PBUILD_RUNTIME_DIR")
    if explicit:
        return os.path.abspath(explicit)
    if os.geteuid() == 0:
        return "/run/pbuild"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.access(xdg, os.W_OK):
        return os.path.join(xdg, "pbuild")
    return f"/tmp/pbuild-{os.geteuid()}"


class ContainerState(NamedTuple):
    """What ``ps``, ``exec``, ``stop`` and ``rm`` need to know about one container."""

    id: str
    name: str
    image: str
    command: tuple[str, ...]
    created: float
    status: str = "created"  # created | running | exited
    pid: int = 0
    pid_start: int = 0
    exit_code: int | None = None
    finished: float | None = None
    detached: bool = False
    auto_remove: bool = False
    env: tuple[str, ...] = ()
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    capabilities: int = 0
    extra: dict[str, Any] = {}  # noqa: RUF012 - never mutated

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def to_json(self) -> str:
        return canonical_json(self._asdict(), ascii_only=True).decode("ascii")

    @classmethod
    def from_json(cls, text: str) -> ContainerState:
        data = json.loads(text)
        for key in ("command", "env", "groups"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 on), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return data[data.rindex(b")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (clock ticks since boot), or None if no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_running(pid: int, start: int) -> bool:
    """``pid`` is the process that started at ``start`` and has not ended (a zombie has: an init
    that reaps slowly keeps an ended process's pid and start time around)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X") and int(fields[19]) == start


class ContainerStore:
    """The runtime directory: container records and name reservations."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or runtime_root()
        self.containers = os.path.join(self.root, "containers")
        self.names = os.path.join(self.root, "names")

    def _ensure(self) -> None:
        """The containers and names folders, private (0700): a container's files (its upper
        layer, its flattened copy) may hold the image's setuid programs."""
        for path in (self.containers, self.names):
            try:
                private = ensure_private_dir(path)
            except OSError as e:
                raise LauncherError(
                    f"cannot create the runtime directory {path}: {e.strerror}",
                    hint="set PBUILD_RUNTIME_DIR to a directory you can write",
                ) from None
            if not private:
                raise LauncherError(
                    f"the runtime directory {path} is not private ({describe_mode(path)})",
                    hint="remove it, or set PBUILD_RUNTIME_DIR to a directory of your own",
                )

    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.containers, container_id)

    def create(
        self,
        name: str | None,
        image: str,
        command: tuple[str, ...],
        container_id: str | None = None,
        **fields: Any,
    ) -> ContainerState:
        """Reserve an id and a name and write the first record."""
        self._ensure()
        container_id = container_id or os.urandom(32).hex()
        name = name or f"pbuild-{container_id[:12]}"
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
            raise LauncherError(
                f"invalid container name {name!r}", hint="use letters, digits, '-', '_' and '.'"
            )
        os.mkdir(self.container_dir(container_id), 0o700)
        try:
            os.symlink(container_id, os.path.join(self.names, name))
        except FileExistsError:
            os.rmdir(self.container_dir(container_id))
            raise LauncherError(
                f"the container name {name!r} is already in use",
                hint=f"remove it with `pbuild rm -f {name}` or choose another --name",
            ) from None
        state = ContainerState(
            id=container_id, name=name, image=image, command=command, created=time.time(), **fields
        )
        self.save(state)
        return state

    def save(self, state: ContainerState) -> None:
        path = os.path.join(self.container_dir(state.id), "state.json")
        atomicio.write_text(path, state.to_json())

    def load(self, container_id: str) -> ContainerState | None:
        try:
            with open(os.path.join(self.container_dir(container_id), "state.json")) as f:
                return ContainerState.from_json(f.read())
        except (OSError, ValueError, TypeError):
            return None

    def find(self, name_or_id: str) -> ContainerState:
        """By name, full id or unique id prefix; a clear error otherwise."""
        try:
            target = os.readlink(os.path.join(self.names, name_or_id))
        except OSError:
            target = None
        if target is None and len(name_or_id) >= 3 and os.path.isdir(self.containers):
            matches = [c for c in os.listdir(self.containers) if c.startswith(name_or_id)]
            if len(matches) > 1:
                raise LauncherError(
                    f"{name_or_id!r} matches {len(matches)} containers", hint="give more of the id"
                )
            target = matches[0] if matches else None
        state = self.load(target) if target else None
        if state is None:
            raise NoSuchContainer(name_or_id)
        return refresh(state)

    def all(self) -> list[ContainerState]:
        if not os.path.isdir(self.containers):
            return []
        states = [self.load(c) for c in os.listdir(self.containers)]
        return sorted((refresh(s) for s in states if s is not None), key=lambda s: s.created)

    def release_name(self, state: ContainerState) -> None:
        link = os.path.join(self.names, state.name)
        try:
            if os.readlink(link) == state.id:
                os.unlink(link)
        except OSError:
            pass


def is_alive(state: ContainerState) -> bool:
    return state.pid > 0 and process_start_time(state.pid) == state.pid_start


def refresh(state: ContainerState) -> ContainerState:
    """A record that says running while its init is gone came from a killed launcher."""
    if state.status == "running" and not is_alive(state):
        return state._replace(
            status="exited", exit_code=state.exit_code if state.exit_code is not None else -1
        )
    return state
