"""The ``pbuild`` command line. Errors become messages and exit codes here, in one place."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from pbuild.engine.errors import EXIT_BAD_INPUT, EXIT_BUILD_FAILED, PbuildError
from pbuild.lib.errors import UserError
from pbuild.lib.version import VERSION as VERSION  # re-exported: what `pbuild version` prints

if TYPE_CHECKING:
    from pbuild.engine.api import Command
    from pbuild.engine.build import BuildRequest
    from pbuild.engine.workspace import Workspace

_DESCRIPTION = "pbuild: hermetic, content-hashed builds of Python programs and reproducible OCI images."
# The engine's own commands: a command line starting with one never imports the families' commands.
_ENGINE_COMMANDS = ("build", "run", "test", "query", "clean", "version", "lock", "system", "worker")
_LAUNCHER_COMMANDS = ("ps", "logs", "exec", "stop", "rm")
# `pbuild ps` and `pbuild logs NAME` go straight to the launcher (no parser, no families: fast);
# with a label or a Compose file they are the stack family's commands.
_STACK_FORMS = {"ps": ("-f", "--file"), "logs": ("--file",)}


def _names_a_stack(args: Sequence[str]) -> bool:
    """Is ``pbuild ps|logs ARGS`` about a stack: a label, or the Compose file flag?"""
    if args[0] not in _STACK_FORMS:
        return False
    flags = _STACK_FORMS[args[0]]
    return any(a.startswith(("//", ":")) or a in flags or a.startswith("--file=") for a in args[1:])


def _add_common(parser: Any) -> None:
    parser.add_argument("--workspace", metavar="DIR", help="workspace root (default: search upward for WORKSPACE.toml)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="local cache (default: $PBUILD_CACHE, else $XDG_CACHE_HOME/pbuild, else ~/.cache/pbuild)")


def _at_least_one(text: str) -> int:
    """argparse type of a count that must be 1 or more (a silent max(1, N) would hide the typo)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _add_build_flags(parser: argparse.ArgumentParser, group: Any = None) -> None:
    """The build flags, into ``group`` of ``parser`` (the remote flags get a group of their own)."""
    into = parser if group is None else group
    _add_common(into)
    into.add_argument("-j", "--jobs", type=_at_least_one, default=os.cpu_count() or 1, metavar="N",
                        help="actions to run at once (default: the number of CPUs)")
    into.add_argument("-k", "--keep-going", action="store_true", help="build everything that can be built after a failure")
    into.add_argument("--build-event-json", metavar="FILE", help="write one JSON line per action and a summary to FILE")
    into.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    _add_remote_flags(parser)


def _add_remote_flags(parser: argparse.ArgumentParser) -> None:
    from pbuild.engine.remote import add_remote_flags

    add_remote_flags(parser)


def make_parser(family_commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The ``pbuild`` parser: the engine's commands, the rule families' ``COMMANDS`` (all built-in
    families' when ``family_commands`` is None), the launcher's, and ``help``."""
    if family_commands is None:
        from pbuild.engine.ruleset import family_commands as builtin_family_commands

        family_commands = builtin_family_commands()
    parser = argparse.ArgumentParser(prog="pbuild", description=_DESCRIPTION,
                                     epilog="`pbuild PATTERN...` is short for `pbuild build PATTERN...`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("build", help="build targets", description="Build the targets the patterns name "
                       "(//pkg:name, :name, //pkg, //..., //pkg/..., //pkg:all).")
    p.add_argument("patterns", nargs="+", metavar="PATTERN")
    _add_build_flags(p)

    # Parsed apart (run_parser), in Docker's order; here for `pbuild --help` only.
    sub.add_parser("run", help="build and run a binary or an image; run an image from disk or the store",
                   add_help=False)

    p = sub.add_parser("test", help="build and run tests", description="Run test targets in parallel; passing "
                       "results are cached by action key.")
    p.add_argument("patterns", nargs="+", metavar="PATTERN")
    p.add_argument("--no-cache-test-results", action="store_true", help="run tests even if a passing result is cached")
    _add_build_flags(p)

    p = sub.add_parser("query", help="query the target graph",
                       description="EXPR: a pattern, deps(X), rdeps(U, X), somepath(A, B), allpaths(A, B), "
                       "combined with +, -, ^ (union, difference, intersection).")
    p.add_argument("expr", metavar="EXPR")
    p.add_argument("--output", choices=("label", "json", "dot"), default="label")
    _add_common(p)

    p = sub.add_parser("clean", help="remove outputs", description="Remove pbuild-out/; with --expunge also empty the cache.")
    p.add_argument("--expunge", action="store_true", help="also remove the local cache (CAS, AC, indexes)")
    _add_common(p)

    sub.add_parser("version", help="print the version", description="Print pbuild's version.")

    p = sub.add_parser("lock", help="resolve third-party dependencies into lock files",
                       description="Write third_party/python/requirements.lock, the Python tool locks "
                                   "and/or the Debian lock.")
    p.add_argument("--python", action="store_true", help="lock third_party/python/requirements.in")
    p.add_argument("--tools", action="store_true",
                   help="lock pbuild's Python tools (pytest) for [python]: the workspace's "
                        "[python.tools.<tool>] lock if set, else pbuild's built-in lock")
    p.add_argument("--debian", action="store_true", help="lock the deb_packages targets of third_party/debian")
    p.add_argument("--mirror", metavar="URL", help="Debian mirror (default: $PBUILD_DEBIAN_MIRROR, else the host's apt sources)")
    _add_common(p)

    _add_system(sub)

    from pbuild.engine.remote.worker import DESCRIPTION as worker_description
    from pbuild.engine.remote.worker import configure as configure_worker

    p = sub.add_parser("worker", help="run a remote execution server's actions here (a REAPI worker)",
                       description=worker_description, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_worker(p)

    taken: set[str] = set()
    for command in family_commands:
        taken.add(command.name)
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.configure(p)
        if command.build_flags:
            _add_build_flags(p)
        else:
            _add_common(p)
        p.set_defaults(family_command=command)

    for name, text in (("ps", "list containers"), ("logs", "show a container's output"),
                       ("exec", "run a command in a running container"), ("stop", "stop a container"),
                       ("rm", "remove a container")):
        if name in taken:  # a family's command with the launcher's form routed before parsing
            continue
        p = sub.add_parser(name, help=text, description=f"{text} (see docs/launcher.md)", add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("help", help="show this help, or a command's (`pbuild help run`)")
    p.add_argument("topic", nargs="?", metavar="COMMAND")
    return parser


_RUN_DESCRIPTION = """\
Build TARGET and run it, or run an IMAGE. The options come first, as in `docker run`; the first
word that is neither an option nor an option's value is the target, and every word after it is
the command, verbatim (one `--` right after the target is dropped).

TARGET is a label (//pkg:name, :name): a py_binary runs with the words after it as its
arguments; an image runs in a container, the words after it replacing its Cmd. IMAGE is
oci:PATH[:NAME], docker-archive:PATH, or the name or ID of an image in the store
(`pbuild images`). Exit codes: the program's or container's own; 125 for an error of pbuild run
itself (a bad option, no such image, a container that cannot start); a failed build 1, a bad
BUILD file 2."""


def run_parser() -> tuple[argparse.ArgumentParser, list[argparse.Action]]:
    """The parser of ``pbuild run``'s options (build and container options; no positionals: the
    target and the command are cut off first, see :mod:`pbuild.lib.cmdline`), and its
    container options."""
    from pbuild.engine.run import USAGE, RunError
    from pbuild.tools.launcher.options import add_run_options

    class RunParser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise RunError(f"pbuild run: {message}", hint=f"{USAGE}; see `pbuild run --help`")

    parser = RunParser(prog="pbuild run", usage=USAGE, description=_RUN_DESCRIPTION, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_build_flags(parser, parser.add_argument_group("build options (for a TARGET)"))
    container = add_run_options(parser.add_argument_group("container options (for an image)"))
    return parser, container


def _parse_run(argv: Sequence[str]) -> argparse.Namespace:
    """``pbuild run``'s command line: the options parsed, the target and the words after it."""
    from pbuild.engine.run import USAGE, ContainerRequest, RunError
    from pbuild.lib.cmdline import OptionTable, split_at_operand
    parser, container = run_parser()
    table = OptionTable.of(parser)
    line = split_at_operand(table, argv)
    args = parser.parse_args(line.options)
    if line.operand is None:
        raise RunError("pbuild run needs a target or an image", hint=f"{USAGE}; see `pbuild run --help`")
    args.command, args.target, args.args = "run", line.operand, line.rest
    container_names = {name for action in container for name in action.option_strings}
    args.container = ContainerRequest(args, tuple(o for o in line.given if o in container_names), table)
    args.build_options = tuple(o for o in line.given if o not in container_names)
    if args.container.given:  # a bad value (-v of a missing folder, -p 1:x) is refused before any build
        args.container.run_options("", ())
    return args


def _help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    """``pbuild help [COMMAND]``."""
    if topic is None:
        parser.print_help()
        return 0
    if topic == "run":
        run_parser()[0].print_help()
        return 0
    if topic in _LAUNCHER_COMMANDS:
        return _launcher([topic, "--help"])
    try:
        parser.parse_args([topic, "--help"])
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_BAD_INPUT
    return 0


def _add_system(sub: Any) -> None:
    """``pbuild system df|prune``: the disk pbuild uses (engine/system.py)."""
    system = sub.add_parser("system", help="show and reclaim the disk pbuild uses",
                            description="df: the build cache, layers, images and containers; "
                                        "prune: remove what nothing uses (see docs/cache.md).")
    verbs = system.add_subparsers(dest="system_command", metavar="SUBCOMMAND", required=True)
    p = verbs.add_parser("df", help="show disk usage", description="Size and reclaimable size of the build "
                         "cache, the layer store, the image store and the containers (hard links counted once).")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("-v", "--verbose", action="store_true", help="list each image, container, layer and cache part")
    _add_common(p)
    p = verbs.add_parser("prune", help="remove unused data", description="Remove stopped containers, layers no "
                         "running container uses, dangling images and the build cache.")
    p.add_argument("-a", "--all", action="store_true", help="also remove every image no running container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    _add_common(p)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pbuild`` command; returns the exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # `pbuild query ... | head`: the reader left; stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def exit_process(code: int) -> NoReturn:
    """End the ``pbuild`` process with ``code`` (the ``./pbuild`` wrapper's exit).

    After a container of ``pbuild run`` ended, the interpreter's teardown (freeing every module
    the launcher loaded, a last GC pass) is all that is left, and it cost 13-40 ms of the run's
    wall time (strace: monitor reaped -> exit_group). It is skipped then, output flushed first,
    but only when it has nothing anyone could see to do: no atexit callback and no other thread.
    Any other command exits normally."""
    run = sys.modules.get("pbuild.engine.run")  # only `pbuild run` loads it: other commands pay no import
    if run is None or not run.container_ended:
        sys.exit(code)
    import threading

    if threading.active_count() == 1 and _atexit_callbacks() == 0:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a reader that left, a closed stream: exit as sys.exit would
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


def _atexit_callbacks() -> int:
    import atexit

    count = getattr(atexit, "_ncallbacks", None)  # CPython's; unknown elsewhere: assume some
    return int(count()) if count is not None else 1


def _main(argv: Sequence[str] | None = None) -> int:
    # Actions must not depend on the user's umask: the same key must give the same file modes.
    # (`pbuild run` gives the user's umask back to the program it starts.)
    user_umask = os.umask(0o022)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0].startswith(("//", ":")):
        args_list.insert(0, "build")
    if args_list and args_list[0] in _LAUNCHER_COMMANDS and not _names_a_stack(args_list):
        return _launcher(args_list)
    parser = None
    try:
        if args_list and args_list[0] == "run":  # its own parser, in Docker's order (and no other)
            args = _parse_run(args_list[1:])
        else:
            parser = make_parser(() if args_list and args_list[0] in _ENGINE_COMMANDS else None)
            args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_BAD_INPUT
    except UserError as exc:  # pbuild run's own command line
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    if parser is not None and args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    if parser is not None and args.command == "help":
        return _help(parser, args.topic)
    try:
        return _dispatch(args, user_umask)
    except UserError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A full disk or a folder pbuild may not write, wherever it struck: a message, not a bug.
        error = _machine_error(exc, args)
        if error is None:
            raise
        print(error.render(), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("pbuild: interrupted; the cache is consistent (every entry is written atomically)", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(130)  # worker threads may still wait on sandboxes, which die with this process


def _machine_error(exc: OSError, args: argparse.Namespace) -> PbuildError | None:
    from pbuild.engine.oserrors import from_os_error
    from pbuild.engine.workspace import default_cache_dir

    cache_dir = os.path.abspath(args.cache_dir) if getattr(args, "cache_dir", None) else default_cache_dir()
    return from_os_error(exc, near=(cache_dir, os.getcwd()), cache_dir=cache_dir)


def _request(args: argparse.Namespace, patterns: Sequence[str], workspace: Workspace | None = None) -> BuildRequest:
    """The build request of a command's flags; ``workspace`` when the command found it already."""
    from pbuild.engine.build import BuildRequest

    settings = None
    if hasattr(args, "remote_cache"):
        from pbuild.engine.remote import resolve_remote_settings
        from pbuild.engine.workspace import find_workspace

        workspace = workspace or find_workspace(os.getcwd(), args.workspace)
        settings = resolve_remote_settings(args, workspace.config, _user_config())
    return BuildRequest(
        patterns=patterns,
        workspace=args.workspace,
        cache_dir=args.cache_dir,
        jobs=args.jobs,
        keep_going=args.keep_going,
        event_file=args.build_event_json,
        remote_settings=settings,
        quiet=args.quiet,
    )


def _user_config() -> dict[str, Any]:
    import tomllib

    from pbuild.engine.workspace import user_config_path
    from pbuild.lib.tomlpos import load_toml

    path = user_config_path()
    try:
        with open(path, "rb") as handle:
            return load_toml(handle.read())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise PbuildError(f"invalid TOML in {path}: {exc}", hint="fix or remove the user config file") from None


def _dispatch(args: argparse.Namespace, user_umask: int) -> int:
    command = args.command
    family_command: Command | None = getattr(args, "family_command", None)
    if family_command is not None:
        from pbuild.engine.commandcontext import EngineCommandContext

        return family_command.run(EngineCommandContext(
            args, os.getcwd(), make_request=lambda patterns, workspace: _request(args, patterns, workspace)))
    if command == "version":
        print(f"pbuild {VERSION}")
        return 0
    if command == "build":
        from pbuild.engine.uptodate import build_command

        build_command(args.patterns, cwd=os.getcwd(), workspace_dir=args.workspace, cache_dir=args.cache_dir,
                      event_file=args.build_event_json, quiet=args.quiet,
                      make_request=lambda workspace: _request(args, args.patterns, workspace))
        return 0
    if command == "run":
        from pbuild.engine.run import RunRequest, run_command

        return run_command(RunRequest(
            target=args.target, args=tuple(args.args), cwd=os.getcwd(), workspace_dir=args.workspace,
            cache_dir=args.cache_dir, user_umask=user_umask,
            make_build_request=lambda workspace: _request(args, [args.target], workspace),
            container=args.container, build_options=args.build_options, event_file=args.build_event_json))
    if command == "test":
        from pbuild.engine.commands import run_tests

        return run_tests(_request(args, args.patterns), no_cache=args.no_cache_test_results)
    if command == "query":
        from pbuild.engine.commands import query_command

        return query_command(args.expr, output=args.output, workspace=args.workspace, cache_dir=args.cache_dir)
    if command == "clean":
        from pbuild.engine.commands import clean

        return clean(workspace=args.workspace, cache_dir=args.cache_dir, expunge=args.expunge)
    if command == "system":
        return _system(args)
    if command == "worker":
        from pbuild.engine.remote.worker import main as worker_main

        return worker_main(args)
    if command == "lock":
        from pbuild.engine.commands import lock

        return lock(workspace=args.workspace, python=args.python, tools=args.tools, debian=args.debian,
                    mirror=args.mirror)
    raise AssertionError(command)


def _system(args: argparse.Namespace) -> int:
    from pbuild.engine import system
    from pbuild.engine.workspace import default_cache_dir, find_workspace

    cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.system_command == "df":
        try:  # the workspace only adds its budget: df works anywhere
            workspace = find_workspace(os.getcwd(), args.workspace)
        except PbuildError:
            if args.workspace is not None:
                raise
            workspace = None
        return system.df_command(cache_dir, workspace, fmt=args.format, verbose=args.verbose)
    return system.prune_command(cache_dir, all_images=args.all, force=args.force)


def _launcher(argv: list[str]) -> int:
    try:
        from pbuild.tools.launcher import main as launcher_main
    except ImportError:
        print("error: the image launcher is not installed", file=sys.stderr)
        return EXIT_BUILD_FAILED
    return int(launcher_main(argv))


if __name__ == "__main__":
    exit_process(main())
