"""Advisory locks on a file (``flock(2)``): shared for users of a store, exclusive for its cleaner.

flock rather than a pid file: the kernel releases it however the holder dies, a recycled pid
cannot pass for a holder, and it means the same in every pid namespace. The lock belongs to the
open file description, so a child that inherits the descriptor shares the lock: descriptors are
opened close-on-exec, and forked children that outlive the holder must close theirs.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable


class FileLock:
    """A held lock; :meth:`release` (or the end of the process) lets it go."""

    __slots__ = ("path", "exclusive", "_fd")

    def __init__(self, path: str, fd: int, exclusive: bool) -> None:
        self.path = path
        self.exclusive = exclusive
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = -1

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(path: str, *, exclusive: bool, blocking: bool = True,
            on_wait: Callable[[], None] | None = None) -> FileLock | None:
    """Lock ``path`` (created 0600 if missing). Without ``blocking``, None when another holds it
    in a conflicting mode; with it, ``on_wait`` is called once before waiting, so the caller can
    say why nothing happens."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            if not blocking:
                os.close(fd)
                return None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
    except BaseException:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    return FileLock(path, fd, exclusive)
