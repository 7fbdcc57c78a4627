"""Run one process action in fresh Linux namespaces (the engine's action sandbox).

Inside, the action sees one of two roots, read-only: the host's (so the host's ``/usr/bin/bash``
and ``python3`` work; the ``hide_paths`` are masked by empty read-only tmpfs mounts), or, with
``SandboxRequest.root``, a toolchain tree (an unpacked ``deb_packages`` or image root) as its
``/``, with nothing of the host's filesystem visible and argv[0] looked up on the PATH inside the
tree, its links followed as if it were ``/``. Either way it has its exec root at the fixed path
``/execroot`` (so outputs never contain host build paths), writable only its declared output
directories, a private ``/tmp`` and ``/run``, a fresh ``/proc``, a minimal ``/dev``, and no
network (a new network namespace with only ``lo``, up).

The package, by job:

- ``request``: :class:`SandboxRequest` in, :class:`SandboxResult` out, the missing-command lines;
- ``plan``: a request becomes one :class:`~plan.Plan`, a list of ``nsops`` operations;
- ``nsops``: those operations and the one interpreter that applies them (shared with the
  launcher); ``linux``: the checked syscalls beneath it;
- two backends that run the same plan (``tests/unit/test_sandbox.py`` runs every test against both):
  ``bwrap`` (bubblewrap, the default when installed: its arguments are translated from the plan)
  and ``fork`` (the plan applied by our own forked children).

:func:`exec_on_root` starts a program the same way for ``pbuild run`` (a toolchain tree as ``/``,
but interactive: the caller's uid, the network, the terminal and the host's ``/dev`` shared, and
chosen host directories bound writable at their own paths); both entry points live in ``entry``.

The names below are resolved on first use (PEP 562): the launcher imports ``linux`` and ``nsops``
from this package on every start, and must not pay for the backends, the plan and dataclasses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbuild.tools.sandbox.entry import exec_on_root, run_sandboxed
    from pbuild.tools.sandbox.plan import Plan
    from pbuild.tools.sandbox.request import (
        EXEC_ROOT,
        HOSTNAME,
        NOT_IN_TOOLCHAIN,
        SandboxRequest,
        SandboxRequestError,
        SandboxResult,
        missing_from_toolchain,
    )

#: Each public name and the submodule it lives in.
_HOMES = {
    "EXEC_ROOT": "request",
    "HOSTNAME": "request",
    "NOT_IN_TOOLCHAIN": "request",
    "SandboxRequest": "request",
    "SandboxRequestError": "request",
    "SandboxResult": "request",
    "missing_from_toolchain": "request",
    "Plan": "plan",
    "run_sandboxed": "entry",
    "exec_on_root": "entry",
}

__all__ = [
    "EXEC_ROOT",
    "HOSTNAME",
    "NOT_IN_TOOLCHAIN",
    "Plan",
    "SandboxRequest",
    "SandboxRequestError",
    "SandboxResult",
    "exec_on_root",
    "missing_from_toolchain",
    "run_sandboxed",
]


def __getattr__(name: str) -> Any:
    # ``plan`` is not among them: importing the submodule ``plan`` binds that name here.
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
