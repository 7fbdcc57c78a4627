"""Advisory locks on a file (``flock(2)``): shared for users of a store, exclusive for its cleaner.

flock rather than a pid file: the kernel releases it however the holder dies, a recycled pid
cannot pass for a holder, and it means the same in every pid namespace. The lock belongs to the
open file description, so a child that inherits the descriptor shares the lock: descriptors are
opened close-on-exec, and forked children that outlive the holder must close theirs.
"""

from __future__ import annotations

import contextlib
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

    def keep_across_exec(self) -> None:
        """Let a program this process execs inherit the lock (and hold it for its life)."""
        os.set_inheritable(self._fd, True)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(path: str, *, exclusive: bool, on_wait: Callable[[], None] | None = None) -> FileLock:
    """Lock ``path`` (created 0600 if missing), waiting while another holds it in a conflicting
    mode; ``on_wait`` is called once before waiting, so the caller can say why nothing happens."""
    lock = _lock(path, exclusive, on_wait, blocking=True)
    assert lock is not None  # a blocking lock is always had in the end
    return lock


def try_acquire(path: str, *, exclusive: bool) -> FileLock | None:
    """:func:`acquire`, or None at once when another holds ``path`` in a conflicting mode."""
    return _lock(path, exclusive, None, blocking=False)


def _lock(path: str, exclusive: bool, on_wait: Callable[[], None] | None, *, blocking: bool) -> FileLock | None:
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
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return FileLock(path, fd, exclusive)
