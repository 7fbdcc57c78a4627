"""Filesystem and namespace setup as data: a list of operations, then one interpreter.

The sandbox and the launcher first *plan* (pure functions that turn a request into a tuple of
the frozen records below, easy to test and to print), then a forked child calls :func:`apply`,
which performs each operation with a checked syscall and on failure raises a
:class:`~pbuild.tools.sandbox.linux.LinuxError` naming the operation, the path and the errno.

The records are ``NamedTuple``s rather than frozen dataclasses: creating a dataclass costs
about ten times more at import, and the launcher imports these on every ``pbuild run``.

Bind sources that the setup itself may shadow (a source below the directory that receives the
new root's tmpfs) are opened first with :class:`OpenPath` and then referred to as
``/proc/self/fd/N`` through a :class:`Slot`.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from pbuild.tools.sandbox import linux


class Slot(NamedTuple):
    """A directory opened earlier by :class:`OpenPath`, used as a bind source; ``below`` is a
    relative path under it (reached through the opened directory, not by name from ``/``)."""

    name: str
    below: str = ""


class OpenPath(NamedTuple):
    """Open ``path`` with O_PATH so later binds still reach it after mounts shadow it."""

    path: str
    slot: Slot


class Mount(NamedTuple):
    """mount(2). ``source`` may be a :class:`Slot`. With ``root``, ``target`` is a path inside
    that root filesystem, resolved with its symlinks kept inside it (see :func:`resolve_in_root`).
    The mount point is created (``create`` = "dir" or "file") when missing; without ``root``
    its parent must exist."""

    source: str | Slot | None
    target: str
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    root: str | None = None
    create: str | None = None


class SetAttr(NamedTuple):
    """mount_setattr(2) on a mount and (``recursive``) every mount below it."""

    target: str
    attr_set: int
    attr_clear: int = 0
    recursive: bool = True
    root: str | None = None


class MakeDir(NamedTuple):
    """mkdir (the parent must exist); an existing directory is fine. With ``root``: ``mkdir -p``
    of a path inside that root, symlinks resolved inside it."""

    path: str
    mode: int = 0o755
    root: str | None = None


class Chdir(NamedTuple):
    path: str


class Mask(NamedTuple):
    """Hide ``path`` inside ``root`` if it exists: an empty read-only tmpfs over a directory,
    ``/dev/null`` over anything else (runc's masked paths)."""

    root: str
    path: str


class ReadOnly(NamedTuple):
    """Make ``path`` inside ``root`` read-only (bind it onto itself, then set MS_RDONLY)."""

    root: str
    path: str
    optional: bool = True


class MakeFile(NamedTuple):
    """Create a file (a bind target, or a generated file such as /etc/hosts)."""

    path: str
    content: bytes = b""
    mode: int = 0o644


class Symlink(NamedTuple):
    """Create the symlink ``path`` -> ``target``; with ``root``, ``path``'s parent is resolved
    inside that root (the link itself is never followed)."""

    target: str
    path: str
    root: str | None = None


class PivotRoot(NamedTuple):
    """Make ``new_root`` the root and detach the old one (pivot_root(".", ".") + umount)."""

    new_root: str


class SetHostname(NamedTuple):
    name: str


class LoopbackUp(NamedTuple):
    """Bring ``lo`` up in the (new) network namespace."""


class DevTree(NamedTuple):
    """A minimal ``/dev`` at ``path``: a tmpfs (nosuid, noexec, 64 KiB) holding ``shm`` (1777)
    and ``pts``, each of ``devices`` bound from the host's ``/dev``, and the ``fd``, ``stdin``,
    ``stdout``, ``stderr`` links into ``/proc/self/fd``. One operation rather than its steps so
    that a backend with its own minimal ``/dev`` (bwrap's ``--dev``) can use it; :func:`apply`
    performs the steps of :func:`dev_tree_ops`."""

    path: str
    devices: tuple[str, ...]


Op = (
    OpenPath
    | Mount
    | SetAttr
    | MakeDir
    | MakeFile
    | Symlink
    | PivotRoot
    | SetHostname
    | LoopbackUp
    | Chdir
    | Mask
    | ReadOnly
    | DevTree
)

_MAX_SYMLINKS = 40


def resolve_in_root(root: str, path: str, create: str | None = None) -> str:
    """The host path of container path ``path`` under ``root``, following symlinks as if
    ``root`` were ``/`` (an absolute link restarts at ``root``, ``..`` stops at it), so the result
    never leaves ``root``. With ``create`` ("dir" or "file") missing components are created.

    Only used before the container runs, when nothing else changes the tree.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        current = os.path.join(root, *done, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if create is None:
                raise
            if pending or create == "dir":
                os.mkdir(current, 0o755)
            else:
                os.close(os.open(current, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path} in {root}")
            target = os.readlink(current)
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        done.append(part)
    return os.path.join(root, *done)


def dev_tree_ops(op: DevTree) -> list[Op]:
    """The steps of a :class:`DevTree`."""
    path = op.path
    ops: list[Op] = [
        Mount("tmpfs", path, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755,size=64k"),
        MakeDir(f"{path}/shm", 0o1777),
        MakeDir(f"{path}/pts"),
    ]
    for dev in op.devices:
        ops.append(Mount(f"/dev/{dev}", f"{path}/{dev}", None, linux.MS_BIND, create="file"))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        ops.append(Symlink(target, f"{path}/{name}"))
    return ops


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
                fd_path = f"/proc/self/fd/{slots[source.name]}"
                source = f"{fd_path}/{source.below}" if source.below else fd_path
            if op.root:
                target = _in_root(op.root, op.target, op.create)
            else:
                target = op.target
                if op.create:
                    _mount_point(target, op.create)
            linux.mount(source, target, op.fstype, op.flags, op.data)
        elif isinstance(op, MakeDir):
            if op.root:
                _in_root(op.root, op.path, "dir")
                continue
            try:
                os.mkdir(op.path, op.mode)
            except FileExistsError:
                pass
            except OSError as e:
                raise _fail(e, f"mkdir({op.path})") from None
        elif isinstance(op, SetAttr):
            target = _in_root(op.root, op.target, None) if op.root else op.target
            linux.mount_setattr(target, op.attr_set, op.attr_clear, op.recursive)
        elif isinstance(op, Chdir):
            try:
                os.chdir(op.path)
            except OSError as e:
                raise _fail(e, f"chdir({op.path})") from None
        elif isinstance(op, Mask):
            _mask(op)
        elif isinstance(op, ReadOnly):
            try:
                target = resolve_in_root(op.root, op.path)
            except FileNotFoundError:
                if op.optional:
                    continue
                raise _fail(FileNotFoundError(errno.ENOENT, op.path), f"read-only {op.path}") from None
            linux.mount(target, target, None, linux.MS_BIND | linux.MS_REC)
            linux.mount_setattr(
                target, linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
            )
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
            path = op.path
            if op.root:
                parent, _, name = op.path.rpartition("/")
                path = os.path.join(_in_root(op.root, parent or "/", "dir"), name)
            try:
                os.symlink(op.target, path)
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
        elif isinstance(op, DevTree):
            apply(dev_tree_ops(op))
        else:  # pragma: no cover - the Op union is closed
            raise TypeError(f"unknown setup operation {op!r}")
        if trace:
            trace(op, time.perf_counter() - started)
    return list(slots.values())


def _mount_point(path: str, kind: str) -> None:
    """Make the missing mount point ``path``: a directory, or (``kind`` "file") an empty file."""
    try:
        if kind == "dir":
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except FileExistsError:
        pass
    except OSError as e:
        raise _fail(e, f"create mount point {path}") from None


def _in_root(root: str, path: str, create: str | None) -> str:
    try:
        return resolve_in_root(root, path, create)
    except OSError as e:
        raise _fail(e, f"resolve {path} in {root}") from None


def _mask(op: Mask) -> None:
    try:
        target = resolve_in_root(op.root, op.path)
        is_dir = stat.S_ISDIR(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _fail(e, f"mask {op.path}") from None
    if is_dir:
        flags = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
        linux.mount("tmpfs", target, "tmpfs", flags, "size=4k,mode=0555")
    else:
        linux.mount("/dev/null", target, None, linux.MS_BIND)


def describe(ops: Iterable[Op]) -> str:
    """One line per operation, for ``--debug`` output and test failure messages."""
    return "\n".join(repr(op) for op in ops)
