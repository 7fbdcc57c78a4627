"""Paths resolved inside a root directory, as a container would see them: the one way the
launcher writes into a layer or a flattened root filesystem.

A path is walked component by component through directory fds opened with ``O_NOFOLLOW``. A
symlink met on the way is read and its target spliced into the rest of the path: an absolute
target restarts at the root, ``..`` climbs the walk's own stack of fds and stops at the root.
So ``var/run/x`` with ``var/run -> /run`` (or ``-> ../run``) reaches ``<root>/run/x``, and a link
to ``/etc`` or ``../../../etc`` reaches ``<root>/etc``, never the host's. The last component is
never followed: callers create, replace or remove it relative to the returned directory fd.

Why a hand-written walk and not openat2(RESOLVE_IN_ROOT), which resolves the same way in the
kernel: Python has no wrapper for it, it cannot create the missing directories a layer needs (so
a walk is needed anyway), and it is missing before Linux 5.6 and refused by some seccomp
profiles. One walk, used everywhere, is the one that gets tested. It never hands ``..`` or a
link to the kernel, so a concurrent rename cannot lead it outside the root either.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from pbuild.tools.fstree import remove_at

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 40
"""Links followed in one walk before giving up with ELOOP (the kernel's limit too)."""


class RootDir:
    """A directory that is ``/`` for every path resolved in it (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, DIR_FLAGS)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_dir(self, parts: Sequence[str], *, create: bool = False) -> int:
        """A new fd for the directory ``parts`` (components, no slashes) below the root, links
        followed inside it; missing directories are made (mode 0755) when ``create``.

        Raises FileNotFoundError (missing, not ``create``), NotADirectoryError (a component is
        a file, or a link to one) or ``OSError(ELOOP)``; the error's filename is the component.
        """
        pending = list(reversed(parts))
        stack = [os.dup(self.fd)]  # the directories from the root down to where we are
        links = 0
        try:
            while pending:
                part = pending.pop()
                if part in ("", "."):
                    continue
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                here = stack[-1]
                try:
                    stack.append(os.open(part, DIR_FLAGS, dir_fd=here))
                    continue
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=here)
                    except FileExistsError:
                        pass  # made meanwhile (maybe as a link): look again
                    pending.append(part)
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                try:
                    target = os.readlink(part, dir_fd=here)
                except OSError:  # EINVAL: not a link, so a file or a device
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", part) from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", part)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending.extend(reversed(target.split("/")))
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)


def clear_dir(dir_fd: int) -> None:
    """Remove everything in the directory ``dir_fd`` (an opaque directory of a layer)."""
    for name in os.listdir(dir_fd):
        remove_at(dir_fd, name)
