"""Filesystem and namespace setup as data: a list of operations, then one interpreter.

The sandbox and the launcher first *plan* (pure functions that turn a request into a tuple of
the frozen records below, easy to test and to print), then a forked child calls :func:`apply`,
which performs each operation with a checked syscall and on failure raises a
:class:`~pbuild.tools.linux.LinuxError` naming the operation, the path and the errno.

Bind sources that the setup itself may shadow (a source below the directory that receives the
new root's tmpfs) are opened first with :class:`OpenPath` and then referred to as
``/proc/self/fd/N`` through a :class:`Slot`.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pbuild.tools import linux


@dataclass(frozen=True)
class Slot:
    """A directory opened earlier by :class:`OpenPath`, used as a bind source."""

    name: str


@dataclass(frozen=True)
class OpenPath:
    """Open ``path`` with O_PATH so later binds still reach it after mounts shadow it."""

    path: str
    slot: Slot


@dataclass(frozen=True)
class Mount:
    """mount(2). ``source`` may be a :class:`Slot`."""

    source: str | Slot | None
    target: str
    fstype: str | None = None
    flags: int = 0
    data: str | None = None


@dataclass(frozen=True)
class SetAttr:
    """mount_setattr(2) on a mount and (``recursive``) every mount below it."""

    target: str
    attr_set: int
    attr_clear: int = 0
    recursive: bool = True


@dataclass(frozen=True)
class MakeDir:
    """mkdir (the parent must exist); an existing directory is fine."""

    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class MakeFile:
    """Create a file (a bind target, or a generated file such as /etc/hosts)."""

    path: str
    content: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    target: str
    path: str


@dataclass(frozen=True)
class PivotRoot:
    """Make ``new_root`` the root and detach the old one (pivot_root(".", ".") + umount)."""

    new_root: str


@dataclass(frozen=True)
class SetHostname:
    name: str


@dataclass(frozen=True)
class LoopbackUp:
    """Bring ``lo`` up in the (new) network namespace."""


Op = OpenPath | Mount | SetAttr | MakeDir | MakeFile | Symlink | PivotRoot | SetHostname | LoopbackUp


def _fail(e: OSError, operation: str) -> linux.LinuxError:
    return linux.LinuxError(e.errno or errno.EIO, operation)


def apply(ops: Iterable[Op], trace: Callable[[Op, float], None] | None = None) -> list[int]:
    """Perform ``ops`` in order; return the fds opened by :class:`OpenPath` (close-on-exec).

    Raises :class:`linux.LinuxError` at the first failed step. ``trace``, when given, is called
    after each operation with the seconds it took (for ``bench/`` and debugging).
    """
    slots: dict[str, int] = {}
    for op in ops:
        started = time.perf_counter() if trace else 0.0
        if isinstance(op, Mount):
            source = op.source
            if isinstance(source, Slot):
                source = f"/proc/self/fd/{slots[source.name]}"
            linux.mount(source, op.target, op.fstype, op.flags, op.data)
        elif isinstance(op, MakeDir):
            try:
                os.mkdir(op.path, op.mode)
            except FileExistsError:
                pass
            except OSError as e:
                raise _fail(e, f"mkdir({op.path})") from None
        elif isinstance(op, SetAttr):
            linux.mount_setattr(op.target, op.attr_set, op.attr_clear, op.recursive)
        elif isinstance(op, MakeFile):
            try:
                fd = os.open(op.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, op.mode)
                try:
                    if op.content:
                        os.write(fd, op.content)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _fail(e, f"create({op.path})") from None
        elif isinstance(op, Symlink):
            try:
                os.symlink(op.target, op.path)
            except FileExistsError:
                pass
            except OSError as e:
                raise _fail(e, f"symlink({op.path} -> {op.target})") from None
        elif isinstance(op, OpenPath):
            try:
                slots[op.slot.name] = os.open(op.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise _fail(e, f"open({op.path}, O_PATH)") from None
        elif isinstance(op, PivotRoot):
            # pivot_root(".", ".") stacks the old root on top of the new one at the same place;
            # the lazy unmount then detaches it, so no put_old directory is needed inside.
            try:
                os.chdir(op.new_root)
            except OSError as e:
                raise _fail(e, f"chdir({op.new_root})") from None
            linux.pivot_root(".", ".")
            linux.umount2(".", linux.MNT_DETACH)
            os.chdir("/")
        elif isinstance(op, SetHostname):
            linux.sethostname(op.name)
        elif isinstance(op, LoopbackUp):
            linux.set_loopback_up()
        else:  # pragma: no cover - the Op union is closed
            raise TypeError(f"unknown setup operation {op!r}")
        if trace:
            trace(op, time.perf_counter() - started)
    return list(slots.values())


def describe(ops: Iterable[Op]) -> str:
    """One line per operation, for ``--debug`` output and test failure messages."""
    return "\n".join(repr(op) for op in ops)
