"""``pbuild worker``: run the actions of a REAPI server's Execution service (BuildGrid, or any
server with the Remote Workers Bots API) on this machine, in pbuild's sandbox.

The modules, by job:

- ``_bots``: the Bots API messages (BotSession, Lease, Worker...) in protobuf wire format;
- ``cas``: the worker's own verified CAS on disk, filled from and emptied into the server's;
- ``inputroot``: an action's Directory graph checked and laid out as its exec root, the
  toolchain layers apart;
- ``execute``: one lease's work (inputs, sandbox, outputs, ActionResult);
- ``session``: the BotSession loop, cancellation, server restarts, SIGTERM.

Actions arrive in pbuild's action format (:mod:`pbuild.engine.remote.actionformat`); an action
of another client runs too, on this machine's root, if its outputs and inputs are well-formed.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse

DESCRIPTION = """\
Serve a remote execution server as one of its workers: create a Bots API session with the
server at --remote-executor, take up to --jobs actions at once, run each in pbuild's sandbox
(no network, only its declared inputs, its toolchain tree as / when it has one), upload the
outputs and report the results. Inputs and toolchains are kept in a local CAS under --cache-dir,
so a second action on the same inputs downloads nothing. Each finished action is one line on
stderr. SIGTERM or Ctrl-C: no new actions; those running finish within --grace seconds, the
rest go back to the server. See docs/remote-execution.md."""


def configure(parser: argparse.ArgumentParser) -> None:
    """The ``pbuild worker`` flags."""
    from pbuild.engine.remote._settings import _header, _seconds

    parser.add_argument("--remote-executor", metavar="URL", required=True,
                        help="the server: grpc://HOST:PORT (or grpcs:// for TLS)")
    parser.add_argument("--remote-instance-name", metavar="NAME", default="",
                        help="the REAPI instance whose actions to run (default: the server's default instance)")
    parser.add_argument("-j", "--jobs", metavar="N", type=_positive, default=1,
                        help="actions to run at once (default: 1)")
    parser.add_argument("--name", metavar="ID", default=None,
                        help="this worker's bot id, unique among the server's workers "
                             "(default: HOSTNAME-PID)")
    parser.add_argument("--cache-dir", metavar="DIR", default=None,
                        help="where the worker's CAS, toolchain trees and exec roots live "
                             "(default: $PBUILD_CACHE, else $XDG_CACHE_HOME/pbuild)")
    parser.add_argument("--remote-header", metavar="NAME=VALUE", type=_header, action="append", default=None,
                        help="extra gRPC metadata sent with every request (repeatable), "
                             "e.g. Authorization=Bearer ...")
    parser.add_argument("--remote-timeout", metavar="SECONDS", type=_seconds, default=60.0,
                        help="time limit of each CAS request (default: 60)")
    parser.add_argument("--grace", metavar="SECONDS", type=_seconds, default=30.0,
                        help="on SIGTERM, how long running actions may take to finish before their "
                             "leases are handed back (default: 30)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def main(args: argparse.Namespace) -> int:
    """Run the worker until a signal stops it; returns the exit code."""
    from pbuild.engine.errors import WorkspaceError
    from pbuild.engine.workspace import default_cache_dir

    url = args.remote_executor
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname:
        raise WorkspaceError(f"--remote-executor {url!r}: expected grpc://HOST:PORT or grpcs://HOST:PORT",
                             hint="the Bots API is gRPC only")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise WorkspaceError(f"--remote-executor {url!r}: the port is not a number") from None
    cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else default_cache_dir()
    # gRPC's core logs a line for every connection the server drops (a restart); the worker
    # says what matters itself. Read when grpc is first imported, hence before.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

    from pbuild.engine.remote import RemoteSettings
    from pbuild.engine.remote.worker.cas import ServerChannel, WorkerCas
    from pbuild.engine.remote.worker.execute import Executor
    from pbuild.engine.remote.worker.session import WorkerOptions, WorkerSession, default_name, eprint
    from pbuild.engine.toolchains import LayerFiles, ToolchainTrees

    settings = RemoteSettings(url=url, instance_name=args.remote_instance_name,
                              headers=tuple(args.remote_header or ()), timeout_s=args.remote_timeout, retries=3)
    name = args.name or default_name()
    os.makedirs(os.path.join(cache_dir, "worker"), exist_ok=True)
    channel = ServerChannel(settings, cache_dir=cache_dir, warn=eprint)
    cas = WorkerCas(os.path.join(cache_dir, "worker", "cas"), channel)
    trees = ToolchainTrees(cache_dir)

    def tree_for(layers: tuple[tuple[str, str], ...], tree_name: str) -> str:
        return trees.tree(tree_name, [LayerFiles(blob, meta) for blob, meta in layers],
                          label=f"remote toolchain {tree_name}")

    executor = Executor(cas, cache_dir, name, tree_for=tree_for)
    options = WorkerOptions(instance_name=args.remote_instance_name, jobs=args.jobs, name=name,
                            grace_s=args.grace)
    session = WorkerSession(channel, executor, options, log=lambda line: eprint(f"{name}: {line}"))
    session.install_signal_handlers()
    eprint(f"{name}: serving {channel.name} with {args.jobs} slot(s); cache {cache_dir}")
    try:
        return session.run()
    finally:
        channel.close()
