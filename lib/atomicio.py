"""Atomic writes: every file or folder pbuild publishes appears whole or not at all.

One naming scheme for every temp name (``<dest>.<12 hex>.tmp``, beside its destination so the
rename never crosses a filesystem), and temp names are removed again when the writer fails (a
full disk, a crash, Ctrl-C), so a reader never sees half a file and nothing is left behind.

This module is the only place that renames onto a published name (``tests/unit/test_atomicio.py``
holds every other module to that): writers fill a temp name and call :func:`publish_file` or
:func:`publish_dir`, or let :func:`write_bytes`, :func:`write_text` or :func:`writing` do all of it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
_TEMP_HEX = 12


def temp_name(dest: str) -> str:
    """A fresh temp name beside ``dest`` (``<dest>.<12 hex>.tmp``)."""
    # os.urandom, not secrets: the name needs no secrecy, and ``secrets`` imports ``random`` and
    # ``hashlib``, too much for pbuild's start-up path, which imports this module.
    return f"{dest}.{os.urandom(_TEMP_HEX // 2).hex()}{TEMP_SUFFIX}"


def temp_target(name: str) -> str | None:
    """The destination a temp name of :func:`temp_name` was made for, or None if ``name`` is none.

    For sweepers of leftovers (a killed writer's temp names), which must tell them from the
    published names beside them.
    """
    stem, dot, tag = name[: -len(TEMP_SUFFIX)].rpartition(".") if name.endswith(TEMP_SUFFIX) else ("", "", "")
    if not dot or not stem or len(tag) != _TEMP_HEX or any(c not in "0123456789abcdef" for c in tag):
        return None
    return stem


@contextlib.contextmanager
def temp_beside(dest: str) -> Iterator[str]:
    """A temp name beside ``dest`` for the caller to fill and :func:`publish_file` onto ``dest``.

    Whatever file is left at the temp name afterwards is removed: on failure, and also on
    success, because renaming a hard link onto another link of the same file succeeds and does
    nothing (POSIX), leaving the temp name behind.
    """
    tmp = temp_name(dest)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):  # never hide why the writer failed
            os.unlink(tmp)
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def publish_file(tmp: str, dest: str) -> None:
    """Rename the finished file ``tmp`` (from :func:`temp_beside`) onto ``dest``, replacing it."""
    os.replace(tmp, dest)


@contextlib.contextmanager
def writing(dest: str, *, mode: int = 0o644, durable: bool = False, parents: bool = False) -> Iterator[BinaryIO]:
    """``with writing(dest) as f:`` writes ``f`` at a temp name and publishes it as ``dest`` at the end.

    The file gets exactly the permission bits ``mode``, whatever the umask. If the block raises
    (a digest check that failed, a full disk), ``dest`` is untouched and the temp name removed.
    ``durable`` fsyncs before the rename, for records that must survive a power cut (state a
    later run trusts); caches that can be rebuilt skip it. ``parents`` creates ``dest``'s folder
    when it is missing (checked only then, so the common case costs no extra system call).
    """
    with temp_beside(dest) as tmp:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, mode)
        except FileNotFoundError:
            if not parents:
                raise
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
            fd = os.open(tmp, flags, mode)
        with open(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(fd, mode)  # exactly ``mode``: os.open's is masked by the umask
            if durable:
                os.fsync(fd)
        publish_file(tmp, dest)


def write_bytes(dest: str, data: bytes, *, mode: int = 0o644, durable: bool = False, parents: bool = False) -> None:
    """Write ``data`` to ``dest`` atomically with permission bits ``mode``; see :func:`writing`."""
    with writing(dest, mode=mode, durable=durable, parents=parents) as handle:
        handle.write(data)


def write_text(dest: str, text: str, *, mode: int = 0o644, durable: bool = False, parents: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically; see :func:`writing`."""
    write_bytes(dest, text.encode("utf-8"), mode=mode, durable=durable, parents=parents)


def publish_dir(tmp_dir: str, dest: str) -> bool:
    """Rename the finished folder ``tmp_dir`` onto ``dest`` if ``dest`` does not exist yet.

    Returns False when another writer published ``dest`` first; ``tmp_dir`` is then left for the
    caller to remove (it may hold what the caller wants to compare or discard).
    """
    try:
        os.rename(tmp_dir, dest)
    except OSError as exc:
        if os.path.isdir(dest) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # someone else won
            return False
        raise
    return True


def replace_dir(tmp_dir: str, dest: str) -> str | None:
    """Swap the finished folder ``tmp_dir`` in as ``dest``, replacing a folder already there.

    Two renames (the old folder aside, then the new one in): a reader sees the old folder, the
    new one or, between the renames, none; never a mix of both. Returns the old folder's temp name for the caller to remove (with its own
    removal rules: outputs may be read-only), or None when ``dest`` did not exist.
    """
    old = None
    if os.path.lexists(dest):
        old = temp_name(dest)
        os.rename(dest, old)
    try:
        os.rename(tmp_dir, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)  # put the old folder back: never leave ``dest`` missing
        raise
    return old
