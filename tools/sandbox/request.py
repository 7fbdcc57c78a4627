"""What goes into the sandbox and what comes out: the request and result records, and the
messages both backends write when the action's program is missing."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

EXEC_ROOT = "/execroot"
"""Where the exec root appears inside the sandbox; fixed so outputs carry no host paths."""

HOSTNAME = "pbuild"
NOT_IN_TOOLCHAIN = "command not found in the toolchain"
"""What the sandbox writes to an action's stderr, after ``pbuild-sandbox: NAME: ``, when argv[0]
is not on the PATH of its toolchain root (:func:`missing_from_toolchain` recognizes it)."""
DEFAULT_PATH = "/usr/bin:/bin"
SETUP_FAILED = 125
"""The exit code of an action whose sandbox could not be set up."""


@dataclass(frozen=True)
class SandboxRequest:
    """One process action to run sandboxed. Paths in ``writable_dirs``/``workdir`` are relative
    to ``exec_root``; ``hide_paths`` are absolute host paths."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    """The action's whole environment; the sandbox adds only ``PWD`` (the working directory inside,
    e.g. ``/execroot/pkg``: fixed, so it keeps actions deterministic) unless it is given."""
    exec_root: str
    writable_dirs: tuple[str, ...]
    workdir: str
    hide_paths: tuple[str, ...]
    stdout_path: str
    stderr_path: str
    timeout_s: float | None = None
    network: bool = False
    hostname: str = HOSTNAME
    root: str | None = None
    """A directory the action sees as its read-only ``/`` (a toolchain tree) instead of the host's
    root; ``hide_paths`` are then moot (nothing of the host is visible)."""
    backend: str = "auto"
    """``bwrap`` (bubblewrap, the default when installed), ``fork`` (our own namespace setup in a
    forked child), or ``auto``; ``$PBUILD_SANDBOX_BACKEND`` overrides ``auto``."""
    on_start: Callable[[int], None] | None = field(default=None, compare=False)
    """Called (in the calling thread) with the pid of the sandbox's top process once it runs:
    SIGKILL to that pid ends the whole sandbox (``pbuild worker`` does so for a cancelled lease)."""


@dataclass(frozen=True)
class SandboxResult:
    """``exit_code`` is 128+N when the action was killed by signal N (137 on timeout)."""

    exit_code: int
    duration_s: float
    error: str | None = None
    timed_out: bool = False


class SandboxRequestError(ValueError):
    """The request itself is malformed (a bug in the caller, not in the action)."""


def not_found_message(name: str, *, on_toolchain: bool) -> str:
    """The line the sandbox writes to stderr when argv[0] is not on the PATH inside."""
    return f"pbuild-sandbox: {name}: {NOT_IN_TOOLCHAIN if on_toolchain else 'command not found'}\n"


_MISSING_LINES = (
    re.compile(rf"^pbuild-sandbox: (.+): {NOT_IN_TOOLCHAIN}$"),  # argv[0] itself
    re.compile(r"^\S+: (?:line \d+: )?([^\s:/]+): command not found$"),  # bash, in the action's script
    re.compile(r"^\S+: \d+: ([^\s:/]+): not found$"),  # dash
)


def missing_from_toolchain(stderr: str, exit_code: int) -> str | None:
    """The program an action on a toolchain root failed to find, or None: argv[0] (the
    sandbox's ``NOT_IN_TOOLCHAIN`` line) or a command its shell script ran (bash's and dash's
    "command not found"), recognized only with the exit code 127 they imply. Lets the engine
    name the toolchain and the Debian package hint."""
    if exit_code != 127:
        return None
    for line in reversed(stderr.splitlines()):
        for pattern in _MISSING_LINES:
            match = pattern.match(line)
            if match:
                return match.group(1)
    return None
