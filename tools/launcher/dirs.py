"""The launcher's own directories: kept private, and their temporaries cleaned after a crash.

Private: the layer store and the container state hold the images' files, setuid-root programs
among them. Like Docker's and Podman's storage they are 0700, so no other local user can reach
(and run) them; a store an older version made 0755 is tightened when next used.

Temporaries (a layer being unpacked, the overlay probe) live in a ``tmp`` folder. Each has a
lock file beside it, ``NAME.lock``, created and flock()ed *before* the directory ``NAME`` and
removed only *after* it. So a directory whose lock file nobody holds, or that has no lock file
at all, belongs to a launcher that was killed, and any launcher may remove it, while a launcher
still unpacking keeps its lock and its directory. flock (not a pid in the name) because it is
released by the kernel however the holder dies, and means the same in every pid namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator

LOCK_SUFFIX = ".lock"


def ensure_private_dir(path: str) -> bool:
    """Create ``path`` (mode 0700) or tighten it to no access for group and others; return
    whether it is private: ours and closed to everyone else."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
        st = os.stat(path)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077


def describe_mode(path: str) -> str:
    """``owner uid N, mode 0755``: why ``path`` is not private, for a message."""
    st = os.stat(path)
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _take_lock(path: str) -> int:
    """Create and lock ``path``; retry if a cleaner removed it between our open and our lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            return fd
        os.close(fd)


@contextlib.contextmanager
def scratch_dir(parent: str, prefix: str) -> Iterator[str]:
    """A new empty directory ``parent/PREFIX-RANDOM``, locked as ours while the block runs and
    removed after it (unless the block renamed it away)."""
    from pbuild.tools.fstree import remove_tree

    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f"{prefix}-{os.urandom(6).hex()}")
    lock = _take_lock(path + LOCK_SUFFIX)
    try:
        os.mkdir(path, 0o700)
        yield path
    finally:
        try:
            if os.path.lexists(path):
                remove_tree(path)
            os.unlink(path + LOCK_SUFFIX)
        finally:
            os.close(lock)


def clean_stale(parent: str) -> list[str]:
    """Remove the temporaries in ``parent`` whose launcher is gone; return their names."""
    from pbuild.tools.fstree import remove_tree

    try:
        names = os.listdir(parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in sorted(names):
        path = os.path.join(parent, name)
        if not name.endswith(LOCK_SUFFIX):
            # Live ones are locked (their lock file exists from before mkdir until after they
            # are gone); look at the lock itself, as a listing can miss a file made meanwhile.
            if not os.path.lexists(path + LOCK_SUFFIX) and os.path.lexists(path):
                remove_tree(path)  # no lock: from a version before locks, or its owner is done
                removed.append(name)
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # removed by its owner meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its launcher is still at work
            if not _same_file(fd, path):
                continue
            target = path.removesuffix(LOCK_SUFFIX)
            if os.path.lexists(target):
                remove_tree(target)
                removed.append(os.path.basename(target))
            os.unlink(path)
        finally:
            os.close(fd)
    return removed
