"""Atomic writes: every file or folder pbuild publishes appears whole or not at all.

One naming scheme for every temp name (``<dest>.<random>.tmp``, beside its destination so the
rename never crosses a filesystem), and temp names are removed again when the writer fails (a
full disk, a crash, Ctrl-C), so a reader never sees half a file and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator

TEMP_SUFFIX = ".tmp"


def temp_name(dest: str) -> str:
    """A fresh temp name beside ``dest`` (``<dest>.<12 hex>.tmp``)."""
    return f"{dest}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


@contextlib.contextmanager
def temp_beside(dest: str) -> Iterator[str]:
    """A temp name beside ``dest`` for the caller to fill and rename onto ``dest``.

    Whatever is left at the temp name afterwards is removed: on failure, and also on success,
    because renaming a hard link onto another link of the same file succeeds and does nothing
    (POSIX), leaving the temp name behind.
    """
    tmp = temp_name(dest)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(tmp)


def write_bytes(dest: str, data: bytes, *, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``data`` to ``dest`` atomically with permission bits ``mode``.

    ``durable`` fsyncs the file before the rename, for records that must survive a power cut
    (state a later run trusts); caches that can be rebuilt skip it.
    """
    with temp_beside(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)


def write_text(dest: str, text: str, *, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically; see :func:`write_bytes`."""
    write_bytes(dest, text.encode("utf-8"), mode=mode, durable=durable)


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
