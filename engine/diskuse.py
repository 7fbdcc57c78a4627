"""Counting disk use honestly: each inode once, and freed only when its last link goes.

Outputs in ``pbuild-out`` and the image store's layouts are hard links to CAS blobs, so the same
bytes appear under several names: summing file sizes would count them twice, and deleting a CAS
entry whose inode has another link frees nothing. A :class:`Tally` records every link it is shown
under a *group* (a kind of thing prune may remove: "the build cache", "layer X", "stopped
containers"); a size is the sum over distinct inodes, and what removing some groups frees is the
sum over inodes all of whose links (``st_nlink``) are in those groups. A link the tally never saw
(a file in some ``pbuild-out``) keeps its inode alive, which is the truth.

Sizes are apparent sizes (``st_size``) of files and symlinks, as Docker reports them; folders
count nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable


class _Inode:
    __slots__ = ("size", "nlink", "groups")

    def __init__(self, size: int, nlink: int) -> None:
        self.size = size
        self.nlink = nlink
        self.groups: dict[str, int] = {}  # group -> links seen in it


class Tally:
    """The inodes below some folders, with the group each of their links was seen in."""

    def __init__(self) -> None:
        self._inodes: dict[tuple[int, int], _Inode] = {}
        self._paths: set[str] = set()

    def add(self, path: str, st: os.stat_result, group: str) -> None:
        """One link (``path``, its ``lstat``); a path shown twice counts once."""
        if path in self._paths or stat.S_ISDIR(st.st_mode):
            return
        self._paths.add(path)
        key = (st.st_dev, st.st_ino)
        inode = self._inodes.get(key)
        if inode is None:
            inode = self._inodes[key] = _Inode(st.st_size, st.st_nlink)
        inode.groups[group] = inode.groups.get(group, 0) + 1

    def add_file(self, path: str, group: str) -> int:
        """:meth:`add` for one path (gone: ignored); returns its size."""
        try:
            st = os.lstat(path)
        except OSError:
            return 0
        self.add(path, st, group)
        return st.st_size

    def add_tree(self, top: str, group: str, skip: Iterable[str] = ()) -> None:
        """Every link below ``top`` (which may be a file), not below the folders in ``skip``, and
        not across mount points (a running container's root is mounted in its own namespace)."""
        skipped = {os.path.normpath(p) for p in skip}
        try:
            top_st = os.lstat(top)
        except OSError:
            return
        if not stat.S_ISDIR(top_st.st_mode):
            self.add(top, top_st, group)
            return
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # unreadable or gone meanwhile: what we cannot see we cannot free
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev == top_st.st_dev and os.path.normpath(entry.path) not in skipped:
                        stack.append(entry.path)
                    continue
                self.add(entry.path, st, group)

    def size(self, include: Callable[[str], bool] | None = None,
             exclude: Callable[[str], bool] | None = None) -> int:
        """Bytes of the distinct inodes with a link in a group ``include`` accepts (every group
        when None) and none in a group ``exclude`` accepts (so that an inode two kinds share is
        counted under one of them)."""
        total = 0
        for inode in self._inodes.values():
            names = inode.groups.keys()
            if (include is None or any(include(g) for g in names)) and \
                    (exclude is None or not any(exclude(g) for g in names)):
                total += inode.size
        return total

    def freed(self, include: Callable[[str], bool]) -> int:
        """Bytes that removing every link in the groups ``include`` accepts frees: the inodes
        with no other link."""
        total = 0
        for inode in self._inodes.values():
            if sum(n for g, n in inode.groups.items() if include(g)) >= inode.nlink:
                total += inode.size
        return total
