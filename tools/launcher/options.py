"""The container options of ``pbuild run`` and ``pbuild exec``, defined once.

The launcher's own parser (``python -m pbuild.tools.launcher run``) and the engine's ``pbuild
run`` parser (which adds the build options) both add them with :func:`add_run_options` and
turn what was parsed into :class:`RunOptions` with :func:`run_options`; ``exec`` adds
:func:`add_exec_options`. Import-light: the engine loads it on every ``pbuild run``, a program's too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pbuild.lib.cmdline import OptionTable, misplaced_option_message, strip_command
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.launcher.hostplatform import host_platform

if TYPE_CHECKING:
    from pbuild.tools.launcher.config import RunOptions

RUN_USAGE = "pbuild run [OPTIONS] IMAGE [COMMAND] [ARG...]"
EXEC_USAGE = "pbuild exec [OPTIONS] CONTAINER COMMAND [ARG...]"


class _Adds(Protocol):
    """A parser or an argument group."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def add_run_options(group: _Adds) -> list[argparse.Action]:
    """Add ``run``'s container options to ``group``; returns them (to tell which were given)."""
    add = group.add_argument
    return [
        add("-d", "--detach", action="store_true", help="run in the background, print the id; output to `pbuild logs`"),
        add("--rm", action="store_true", help="remove the container when it exits"),
        add("--name", metavar="NAME", help="name the container (default pbuild-<id>)"),
        add("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
            help="set a variable (NAME alone copies it from here)"),
        add("--env-file", action="append", default=[], metavar="FILE", help="read NAME=VALUE lines from a file"),
        add("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CONTAINER[/udp]",
            help="publish a port through slirp4netns (implies --network slirp4netns)"),
        add("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER[:ro]", help="bind a host path"),
        add("-w", "--workdir", metavar="DIR", help="working directory inside the container"),
        add("-u", "--user", metavar="USER[:GROUP]", help="names or ids of the image's /etc/passwd and /etc/group"),
        add("-i", "--interactive", action="store_true", help="keep stdin open"),
        add("-t", "--tty", action="store_true", help="allocate a pseudo-terminal"),
        add("--init", action="store_true", help="run a small init that forwards signals and reaps"),
        add("--entrypoint", metavar="PATH", help="replace the image's entrypoint (and drop its cmd)"),
        add("--network", "--net", default="none", choices=["none", "host", "slirp4netns"],
            help="none (default), host, or slirp4netns (user-mode networking; implied by -p)"),
        add("--read-only", action="store_true", help="read-only root (with tmpfs /tmp and /run)"),
        add("--cap-add", action="append", default=[], metavar="CAP", help="add a capability (e.g. SYS_ADMIN, or ALL)"),
        add("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (or ALL)"),
        add("--hostname", metavar="NAME", help="hostname (default: the name or short id)"),
        add("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 512m (cgroups)"),
        add("--cpus", type=float, metavar="X", help="CPU quota, e.g. 1.5 (cgroups)"),
        add("--pids-limit", type=int, metavar="N", help="maximum number of processes (cgroups)"),
        add("--security-opt", action="append", default=[], metavar="OPT",
            help="seccomp=unconfined (no syscall filter) or seccomp=PROFILE.json (Docker's format)"),
        add("--platform", metavar="OS/ARCH",
            help=f"the platform to pick from a multi-platform image; this machine is {host_platform()}, "
                 "another runs under emulation (qemu-user-static)"),
    ]


def add_exec_options(group: _Adds) -> list[argparse.Action]:
    """Add ``exec``'s options to ``group``; returns them."""
    add = group.add_argument
    return [
        add("-i", "--interactive", action="store_true", help="keep stdin open"),
        add("-t", "--tty", action="store_true", help="allocate a pseudo-terminal"),
        add("-e", "--env", action="append", default=[], metavar="NAME[=VALUE]",
            help="set a variable over the container's (NAME alone copies it from here)"),
        add("-w", "--workdir", metavar="DIR", help="working directory (default: the container's)"),
        add("-u", "--user", metavar="USER[:GROUP]", help="user (default: the container's)"),
    ]


def image_command(table: OptionTable, rest: Sequence[str], kind: str, usage: str) -> tuple[str, ...]:
    """The command after an image or container (one ``--`` before it dropped); an option of
    ``table`` there is refused, with the fix (Docker would pass it on; the old order put it there)."""
    command, option = strip_command(table, rest)
    if option is not None:
        message, hint = misplaced_option_message(option, command[0], kind, usage)
        raise LauncherError(message, hint=hint)
    return command


def checked_platform(platform: str | None) -> str | None:
    """``--platform``: None, this machine's own platform, or another one pbuild knows whose
    programs this machine can run under emulation (qemu-user-static through a binfmt_misc handler
    with the F flag, :mod:`.binfmt`); returned in OCI's spelling. Anything else is refused, with
    how to set the emulation up. Checked here, before a target is built for a run that cannot start."""
    if platform is None:
        return None
    host = host_platform()
    if platform == host:
        return platform
    from pbuild.lib.architectures import ARCHITECTURES
    from pbuild.lib.platforms import Platform, PlatformError  # only for another platform: dataclasses

    try:
        wanted = Platform.parse(platform)
    except PlatformError:
        others = [f"linux/{arch}" for arch in ARCHITECTURES if f"linux/{arch}" != host]
        raise LauncherError(
            f"--platform {platform}: not a platform pbuild runs",
            hint=f"use --platform {host} (this machine's), {' or '.join(others)} (under emulation), "
                 "or leave --platform out",
        ) from None
    if str(wanted) != host:
        from pbuild.tools.launcher import binfmt

        binfmt.require(wanted, what=f"--platform {platform}: ")
    return str(wanted)


def run_options(ns: argparse.Namespace, image: str, command: Sequence[str]) -> RunOptions:
    """The :class:`RunOptions` of the container options parsed into ``ns`` (the records are
    loaded here, not at import: a ``pbuild run`` of a program never needs them)."""
    from pbuild.tools.launcher.config import PortMapping, RunOptions, Volume

    network = ns.network
    if ns.publish and network == "none":
        network = "slirp4netns"
    if ns.publish and network == "host":
        raise LauncherError(
            "-p/--publish cannot be used with --network host", hint="the host's ports are shared already"
        )
    return RunOptions(
        image=image,
        command=tuple(command),
        entrypoint=ns.entrypoint,
        env=tuple(ns.env),
        env_files=tuple(ns.env_file),
        volumes=tuple(Volume.parse(v) for v in ns.volume),
        workdir=ns.workdir,
        user=ns.user,
        read_only=ns.read_only,
        remove=ns.rm,
        interactive=ns.interactive,
        tty=ns.tty,
        name=ns.name,
        detach=ns.detach,
        network=network,
        publish=tuple(PortMapping.parse(p) for p in ns.publish),
        hostname=ns.hostname,
        init=ns.init,
        memory=ns.memory,
        pids_limit=ns.pids_limit,
        cpus=ns.cpus,
        cap_add=tuple(ns.cap_add),
        cap_drop=tuple(ns.cap_drop),
        security_opt=tuple(ns.security_opt),
        platform=checked_platform(ns.platform),
    )
