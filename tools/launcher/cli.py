"""``pbuild run|ps|logs|exec|stop|rm``: parse Docker-like flags, then call the one module that
does the work. Every user error is a :class:`LauncherError` turned into a message and its exit
code: 125 for a bad flag, image or setup, 1 for a container that does not exist (as Docker)."""

from __future__ import annotations

import argparse
import sys
import time

from pbuild.tools.launcher.config import PortMapping, RunOptions, Volume
from pbuild.tools.launcher.errors import EXIT_LAUNCHER, LauncherError
from pbuild.tools.sandbox import linux

USAGE = """\
usage: pbuild run IMAGE [FLAGS] [-- CMD ARGS...]     IMAGE: oci:PATH[:NAME] | docker-archive:PATH
       pbuild ps [-a]
       pbuild logs [-f] NAME
       pbuild exec [-i] [-t] NAME CMD [ARGS...]
       pbuild stop [-t SECONDS] NAME...
       pbuild rm [-f] NAME...
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise LauncherError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _run_parser() -> _Parser:
    # argparse asks the terminal for its width once per add_argument unless given one: measure once.
    import shutil

    width = max(40, shutil.get_terminal_size().columns - 2)
    p = _Parser(
        prog="pbuild run",
        description="Run an image in new namespaces.",
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=width),
    )
    p.add_argument("image", help="oci:PATH[:NAME] or docker-archive:PATH")
    p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--entrypoint", help="replace the image's entrypoint (and drop its cmd)")
    p.add_argument("-e", "--env", action="append", default=[], help="set NAME=VALUE (or copy NAME from here)")
    p.add_argument("--env-file", action="append", default=[], help="read NAME=VALUE lines from a file")
    p.add_argument("-v", "--volume", action="append", default=[], help="bind HOST:CONTAINER[:ro]")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="USER[:GROUP] (names or ids of the image)")
    p.add_argument("--read-only", action="store_true", help="read-only root (with tmpfs /tmp and /run)")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument(
        "-d", "--detach", action="store_true", help="run in the background; output to `pbuild logs`"
    )
    p.add_argument("--name", help="name the container (default pbuild-<id>)")
    p.add_argument("--hostname", help="hostname (default: the name or short id)")
    p.add_argument(
        "--network",
        "--net",
        default="none",
        choices=["none", "host", "slirp4netns"],
        help="none (default), host, or slirp4netns (user-mode networking; implied by -p)",
    )
    p.add_argument("-p", "--publish", action="append", default=[], help="HOST:CONTAINER port via slirp4netns")
    p.add_argument("--init", action="store_true", help="run a small init that forwards signals and reaps")
    p.add_argument("--memory", "-m", help="memory limit, e.g. 512m (cgroups)")
    p.add_argument("--pids-limit", type=int, help="maximum number of processes (cgroups)")
    p.add_argument("--cpus", type=float, help="CPU quota, e.g. 1.5 (cgroups)")
    p.add_argument("--cap-add", action="append", default=[], help="add a capability (e.g. SYS_ADMIN, or ALL)")
    p.add_argument("--cap-drop", action="append", default=[], help="drop a capability (or ALL)")
    p.add_argument(
        "--security-opt",
        action="append",
        default=[],
        help="seccomp=unconfined (no syscall filter) or seccomp=PROFILE.json (Docker's format)",
    )
    return p


def parse_run(argv: list[str]) -> RunOptions:
    """``IMAGE [FLAGS] [-- CMD...]``; flags may come before or after the image."""
    if "--" in argv:
        cut = argv.index("--")
        head, command = argv[:cut], argv[cut + 1 :]
    else:
        head, command = argv, []
    ns = _run_parser().parse_intermixed_args(head)
    command = list(ns.extra) + command
    if ns.publish and ns.network == "none":
        ns.network = "slirp4netns"
    if ns.publish and ns.network == "host":
        raise LauncherError(
            "-p/--publish cannot be used with --network host", hint="the host's ports are shared already"
        )
    return RunOptions(
        image=ns.image,
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
        network=ns.network,
        publish=tuple(PortMapping.parse(p) for p in ns.publish),
        hostname=ns.hostname,
        init=ns.init,
        memory=ns.memory,
        pids_limit=ns.pids_limit,
        cpus=ns.cpus,
        cap_add=tuple(ns.cap_add),
        cap_drop=tuple(ns.cap_drop),
        security_opt=tuple(ns.security_opt),
    )


def main(argv: list[str]) -> int:
    """The launcher CLI. Returns the container's exit code for ``run``."""
    started = time.perf_counter()
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            from pbuild.tools.launcher.run import run

            return run(parse_run(rest), started)
        from pbuild.tools.launcher import lifecycle
        from pbuild.tools.launcher.state import ContainerStore

        if command == "ps":
            p = _Parser(prog="pbuild ps")
            p.add_argument("-a", "--all", action="store_true", help="also stopped containers")
            return lifecycle.ps(ContainerStore(), p.parse_args(rest).all)
        if command == "logs":
            p = _Parser(prog="pbuild logs")
            p.add_argument("-f", "--follow", action="store_true")
            p.add_argument("name")
            ns = p.parse_args(rest)
            return lifecycle.logs(ContainerStore(), ns.name, ns.follow)
        if command == "exec":
            p = _Parser(prog="pbuild exec")
            p.add_argument("-i", "--interactive", action="store_true")
            p.add_argument("-t", "--tty", action="store_true")
            p.add_argument("name")
            p.add_argument("cmd", nargs=argparse.REMAINDER)
            ns = p.parse_args(rest)
            cmd = ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd
            return lifecycle.exec_in(ContainerStore(), ns.name, cmd, ns.interactive, ns.tty)
        if command == "stop":
            p = _Parser(prog="pbuild stop")
            p.add_argument(
                "-t", "--time", type=float, default=10.0, help="seconds before SIGKILL (default 10)"
            )
            p.add_argument("names", nargs="+")
            ns = p.parse_args(rest)
            return lifecycle.stop_all(ContainerStore(), ns.names, ns.time)
        if command == "rm":
            p = _Parser(prog="pbuild rm")
            p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
            p.add_argument("names", nargs="+")
            ns = p.parse_args(rest)
            return lifecycle.rm(ContainerStore(), ns.names, ns.force)
        raise LauncherError(f"unknown command {command!r}", hint="commands: run, ps, logs, exec, stop, rm")
    except LauncherError as e:
        sys.stderr.write(e.render() + "\n")
        return e.exit_code
    except linux.LinuxError as e:
        sys.stderr.write(f"pbuild: error: {e}\n")
        return EXIT_LAUNCHER
    except KeyboardInterrupt:
        return 130
