"""``pbuild run|ps|logs|exec|stop|rm``: parse Docker's command lines (``run [OPTIONS] IMAGE
[COMMAND] [ARG...]``, the options defined once in :mod:`.options`), then call the one module that
does the work. Every user error is a :class:`LauncherError` turned into a message and its exit
code: 125 for a bad flag, image or setup, 1 for a container that does not exist (as Docker)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from pbuild.lib.cmdline import OptionTable, split_at_operand
from pbuild.tools.launcher.config import RunOptions
from pbuild.tools.launcher.errors import EXIT_LAUNCHER, LauncherError
from pbuild.tools.launcher.options import (
    EXEC_USAGE,
    RUN_USAGE,
    add_exec_options,
    add_run_options,
    image_command,
    run_options,
)
from pbuild.tools.sandbox import linux

USAGE = f"""\
usage: {RUN_USAGE}     IMAGE: oci:PATH[:NAME] | docker-archive:PATH
       pbuild ps [-a]
       pbuild logs [-f] NAME
       {EXEC_USAGE}
       pbuild stop [-t SECONDS] NAME...
       pbuild rm [-f] NAME...
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise LauncherError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _formatter() -> Any:
    """A formatter class of a fixed width: argparse asks the terminal for its width once per
    add_argument unless given one, so measure once."""
    import shutil

    width = max(40, shutil.get_terminal_size().columns - 2)

    class Formatter(argparse.HelpFormatter):
        def __init__(self, prog: str) -> None:
            super().__init__(prog, width=width)

    return Formatter


def _run_parser() -> _Parser:
    p = _Parser(prog="pbuild run", usage=RUN_USAGE, allow_abbrev=False, formatter_class=_formatter(),
                description="Run an image in new namespaces. IMAGE is oci:PATH[:NAME] or docker-archive:PATH; "
                            "COMMAND and its ARGs replace the image's Cmd.")
    add_run_options(p.add_argument_group("container options"))
    return p


def parse_run(argv: list[str]) -> RunOptions:
    """``[OPTIONS] IMAGE [COMMAND] [ARG...]``, Docker's order: the options before the image."""
    parser = _run_parser()
    table = OptionTable.of(parser)
    line = split_at_operand(table, argv)
    ns = parser.parse_args(line.options)
    if line.operand is None:
        raise LauncherError("pbuild run needs an image", hint=f"{RUN_USAGE}; see `pbuild run --help`")
    return run_options(ns, line.operand, image_command(table, line.rest, "image", RUN_USAGE))


def run_image(options: RunOptions, started: float | None = None) -> int:
    """Run an image whose options were parsed elsewhere (the engine's ``pbuild run``); errors
    become messages and exit codes as in :func:`main`."""
    from pbuild.tools.launcher.run import run

    return _reported(lambda: run(options, time.perf_counter() if started is None else started))


def _exec(rest: list[str]) -> int:
    from pbuild.tools.launcher import lifecycle
    from pbuild.tools.launcher.state import ContainerStore

    p = _Parser(prog="pbuild exec", usage=EXEC_USAGE, allow_abbrev=False, formatter_class=_formatter(),
                description="Run a command in a running container: its namespaces, user, environment and "
                            "working directory unless the options change them.")
    add_exec_options(p)
    table = OptionTable.of(p)
    line = split_at_operand(table, rest)
    ns = p.parse_args(line.options)
    if line.operand is None:
        raise LauncherError("pbuild exec needs a container and a command", hint=f"{EXEC_USAGE}")
    command = image_command(table, line.rest, "container", EXEC_USAGE)
    return lifecycle.exec_in(ContainerStore(), line.operand, list(command), ns.interactive, ns.tty,
                             env=tuple(ns.env), workdir=ns.workdir, user=ns.user)


def _reported(work: Callable[[], int]) -> int:
    """``work()``'s exit code, or the message and exit code of the user error it raised."""
    try:
        return work()
    except LauncherError as e:
        sys.stderr.write(e.render() + "\n")
        return e.exit_code
    except linux.LinuxError as e:
        sys.stderr.write(f"pbuild: error: {e}\n")
        return EXIT_LAUNCHER
    except KeyboardInterrupt:
        return 130


def main(argv: list[str]) -> int:
    """The launcher CLI. Returns the container's exit code for ``run``."""
    started = time.perf_counter()
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    return _reported(lambda: _command(argv[0], argv[1:], started))


def _command(command: str, rest: list[str], started: float) -> int:
    if command == "run":
        from pbuild.tools.launcher.run import run

        return run(parse_run(rest), started)
    if command == "exec":
        return _exec(rest)
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
