"""From an image config and Docker-like flags to the one record that says what to run.

Docker's rules: the command after the image replaces the image's Cmd; ``--entrypoint`` replaces its
Entrypoint and drops its Cmd; ``-e`` and ``--env-file`` override the image's Env (``-e NAME``
without a value copies it from the caller); ``-w`` and ``-u`` override WorkingDir and User.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from pbuild.tools.launcher.errors import LauncherError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Volume(NamedTuple):
    """``-v HOST:CONTAINER[:ro]``"""

    host: str
    container: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise LauncherError(f"invalid volume {text!r}", hint="use -v HOST_PATH:CONTAINER_PATH[:ro|rw]")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise LauncherError(f"invalid volume mode {mode!r} in {text!r}", hint="the mode is ro or rw")
        host = os.path.abspath(parts[0])
        if not os.path.exists(host):
            raise LauncherError(
                f"volume source {host} does not exist", hint="create it first (as Docker would not)"
            )
        if not parts[1].startswith("/"):
            raise LauncherError(f"volume target {parts[1]!r} must be an absolute path inside the container")
        return cls(host, os.path.normpath(parts[1]), mode == "ro")


class PortMapping(NamedTuple):
    """``-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]``"""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = "0.0.0.0"

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        spec, _, protocol = text.partition("/")
        parts = spec.split(":")
        try:
            if len(parts) == 2:
                return cls(int(parts[0]), int(parts[1]), protocol or "tcp")
            if len(parts) == 3:
                return cls(int(parts[1]), int(parts[2]), protocol or "tcp", parts[0])
        except ValueError:
            pass
        raise LauncherError(
            f"invalid port mapping {text!r}", hint="use -p HOST_PORT:CONTAINER_PORT[/tcp|udp]"
        )


class NetworkJoin(NamedTuple):
    """Join a stack's network (``pbuild.tools.stack.network``) instead of a network of one's own.

    The container enters the user namespace of the holder process (``holder_pid``, checked
    against ``holder_start`` so a recycled pid is refused; no id maps are written), gets a
    network namespace of its own whose ``eth0`` (a veth on the holder's bridge) has ``address``
    ("10.89.0.3/24"), and a route to that subnet only; with ``outbound`` also slirp4netns's
    ``tap0`` and default route. ``hosts`` are extra ``/etc/hosts`` lines, each an address and
    its names. ``gateway`` is the bridge's address (recorded; nothing routes through it).
    """

    holder_pid: int
    holder_start: int
    address: str
    gateway: str
    hosts: tuple[tuple[str, ...], ...] = ()
    outbound: bool = False


class RunOptions(NamedTuple):
    """The flags of ``run``, as given."""

    image: str
    command: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    volumes: tuple[Volume, ...] = ()
    workdir: str | None = None
    user: str | None = None
    read_only: bool = False
    remove: bool = False
    interactive: bool = False
    tty: bool = False
    name: str | None = None
    detach: bool = False
    network: str = "none"
    publish: tuple[PortMapping, ...] = ()
    hostname: str | None = None
    init: bool = False
    memory: str | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    platform: str | None = None
    """The platform to pick from an index (``linux/amd64``); None: this machine's."""
    join: NetworkJoin | None = None
    """A stack's network (the stack supervisor sets it; no flag does)."""
    labels: tuple[tuple[str, str], ...] = ()
    """KEY, VALUE pairs kept in the container's state (``extra["labels"]``), e.g. the stack,
    service and configuration hash that ``ps`` shows."""


class ContainerSpec(NamedTuple):
    """Everything the namespace setup needs, resolved from the image and the flags."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    hostname: str
    options: RunOptions
    image_digest: str = ""
    labels: dict[str, str] = {}  # noqa: RUF012 - never mutated


def _read_env_file(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise LauncherError(f"cannot read env file {path}: {e.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """``base`` (``NAME=VALUE`` items) with ``overrides`` over it, Docker's ``-e`` way."""
    merged: dict[str, str] = {}
    for item in base:
        key, _, value = item.partition("=")
        merged[key] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key:
            raise LauncherError(f"invalid environment variable {item!r}", hint="use -e NAME=VALUE or -e NAME")
        if sep:
            merged[key] = value
        elif key in os.environ:
            merged[key] = os.environ[key]
    return [f"{k}={v}" for k, v in merged.items()]


def resolve_spec(
    config: dict[str, Any], options: RunOptions, container_id: str, image_digest: str = ""
) -> ContainerSpec:
    """Combine the image config's ``config`` object with the flags, Docker's way."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if options.entrypoint is not None:
        entrypoint = [options.entrypoint] if options.entrypoint else []
        cmd = []
    if options.command:
        cmd = list(options.command)
    argv = tuple(entrypoint + cmd)
    if not argv:
        raise LauncherError(
            f"image {options.image} has no Entrypoint or Cmd and no command was given",
            hint=f"give one after the image, e.g. `pbuild run {options.image} /bin/sh`",
        )
    hostname = options.hostname or (options.name or container_id[:12])[:63]
    env_overrides: list[str] = []
    for path in options.env_files:
        env_overrides += _read_env_file(path)
    env_overrides += list(options.env)
    env = merge_env(list(config.get("Env") or []), env_overrides)
    keys = {item.partition("=")[0] for item in env}
    if "PATH" not in keys:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    env.append(f"HOSTNAME={hostname}")
    if options.tty and "TERM" not in keys:
        env.append("TERM=xterm")
    workdir = options.workdir or config.get("WorkingDir") or "/"
    if not workdir.startswith("/"):
        raise LauncherError(f"working directory {workdir!r} must be absolute")
    user = options.user if options.user is not None else (config.get("User") or "0")
    return ContainerSpec(
        argv=argv,
        env=tuple(env),
        workdir=os.path.normpath(workdir),
        user=user or "0",
        hostname=hostname,
        options=options,
        image_digest=image_digest,
        labels=dict(config.get("Labels") or {}),
    )
