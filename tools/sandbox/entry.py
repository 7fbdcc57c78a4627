"""The sandbox's two entry points: run an action (:func:`run_sandboxed`) and become a program on a
toolchain tree (:func:`exec_on_root`), each on the backend the request or the machine picks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NoReturn

from pbuild.tools.sandbox.bwrap import exec_bwrap, find_bwrap, run_bwrap
from pbuild.tools.sandbox.fork import exec_forked, run_forked
from pbuild.tools.sandbox.plan import check_binds, command_on_root, plan_on_root
from pbuild.tools.sandbox.request import (
    SETUP_FAILED,
    SandboxRequest,
    SandboxRequestError,
    SandboxResult,
    not_found_message,
)


def _backend(requested: str) -> str:
    if requested == "auto":
        return os.environ.get("PBUILD_SANDBOX_BACKEND") or ("bwrap" if find_bwrap() else "fork")
    return requested


def run_sandboxed(request: SandboxRequest) -> SandboxResult:
    """Run ``request.argv`` in a fresh sandbox and wait for it; safe to call from many threads."""
    backend = _backend(request.backend)
    if backend == "bwrap":
        binary = find_bwrap()
        if binary is None:
            return SandboxResult(
                SETUP_FAILED, 0.0, error="sandbox backend bwrap requested, but bwrap is not installed"
            )
        return run_bwrap(request, binary)
    if backend != "fork":
        return SandboxResult(
            SETUP_FAILED, 0.0, error=f"unknown sandbox backend {backend!r} (bwrap, fork or auto)"
        )
    return run_forked(request)


def exec_on_root(
    root: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    binds: Sequence[str],
    cwd: str,
    backend: str = "auto",
) -> NoReturn:
    """Become ``argv`` running on the tree ``root`` as its read-only ``/`` (``pbuild run`` of a
    program on its toolchain): the host directories ``binds`` writable at their own paths (the
    workspace, the working directory, the output tree), the working directory ``cwd``, the
    network, stdin/stdout/stderr and the terminal shared, the caller's own uid and gid (not
    root), the host's ``/dev``, a fresh ``/proc``, a private ``/tmp`` and ``/run``; nothing else
    of the host is visible. The exit status is the program's (128+N for signal N).

    Call it from a single-threaded process. With bwrap (``backend`` as for
    :class:`SandboxRequest`) the process execs bwrap; with the fork backend it stays as a thin
    waiter around the same namespace setup as an action's. Raises :class:`SandboxRequestError`,
    before anything irreversible, for a bad root, bind or working directory; a program the
    root lacks exits 127 with the :data:`NOT_IN_TOOLCHAIN` message, a failed setup 125.
    """
    if not argv:
        raise SandboxRequestError("argv is empty")
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise SandboxRequestError(f"root {root} is not a directory")
    if not os.path.isabs(cwd):
        raise SandboxRequestError(f"working directory {cwd!r} must be an absolute path")
    real_binds = check_binds(binds)
    cwd = os.path.normpath(cwd)
    env = {**env, "PWD": cwd}
    backend = _backend(backend)
    binary = find_bwrap() if backend == "bwrap" else None
    if backend not in ("bwrap", "fork") or (backend == "bwrap" and binary is None):
        raise SandboxRequestError(
            f"sandbox backend {backend!r} is unknown or not installed (bwrap, fork or auto)"
        )
    p = plan_on_root(real_root, argv, real_binds, cwd)  # may refuse a bind through a link of the tree
    if binary is None:
        exec_forked(p, env, root)
    command = command_on_root(real_root, argv[0], env, real_binds, cwd)
    if command is None:
        os.write(2, not_found_message(argv[0], on_toolchain=True).encode())
        os._exit(127)
    exec_bwrap(p, binary, command, env)
