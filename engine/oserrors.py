"""The ``OSError``s a user's machine causes (a full disk, a used-up quota, a read-only or foreign
folder) as user errors: what could not be written, on which filesystem, and what to do.

Anything else an ``OSError`` can mean is still a bug in pbuild and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence

from pbuild.engine.errors import OutOfSpace, PbuildError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_ALLOWED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_TEMP_SUFFIX = re.compile(r"\.[0-9a-f]{8,32}\.tmp$")  # pbuild writes beside, then renames into place


def from_os_error(exc: BaseException, *, near: Sequence[str] = (), cache_dir: str | None = None,
                  label: object | None = None) -> PbuildError | None:
    """The user error ``exc`` stands for, or None if it is not one of the machine's.

    ``near`` are folders the failed write may have been in, for errors that do not carry a file
    name (a ``write()`` on an open file): the first on a full filesystem is named. ``cache_dir``
    lets the hint say when the cache is the folder at fault.
    """
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE | NOT_ALLOWED:
        return None
    # shutil's copies name the source first and the destination, the one that was full, second
    named = exc.filename2 if exc.errno in NO_SPACE and exc.filename2 is not None else exc.filename
    path = os.fsdecode(named) if named is not None else None
    if exc.errno in NOT_ALLOWED:
        if path is None:
            return None  # nothing to point the user at: keep the traceback
        in_cache = cache_dir is not None and _inside(path, cache_dir)
        hint = (f"the cache dir {cache_dir} must be writable by you: fix its permissions, or pass "
                "--cache-dir DIR (or set $PBUILD_CACHE) to another folder" if in_cache else
                f"check the permissions of {path} and its folders (pbuild runs as uid {os.geteuid()})")
        return PbuildError(f"{exc.strerror}: {path}", label=label, hint=hint)
    if path is None:
        path = next((p for p in near if _free_bytes(p) == 0), near[0] if near else None)
    quota = exc.errno == errno.EDQUOT
    what = "disk quota exceeded" if quota else "no space left on device"  # on a device we cannot name
    if path is not None:
        what = f"{'disk quota exceeded' if quota else 'no space left'} on {describe_filesystem(path)}"
        if named is not None:
            what += f", writing {_TEMP_SUFFIX.sub('', path)}"
    in_cache = path is not None and cache_dir is not None and _inside(path, cache_dir)
    hint = "ask for a larger quota or delete some of your files" if quota else "free some space there"
    if in_cache or path is None:
        hint += "; `pbuild clean --expunge` empties the cache, or --cache-dir DIR moves it to a larger filesystem"
    return OutOfSpace(what, label=label, hint=hint)


def describe_filesystem(path: str) -> str:
    """``tmpfs mounted at /x``: the filesystem holding ``path`` (or its nearest existing parent)."""
    mount = _existing(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    source = _mount_source(mount)
    return f"{source + ' ' if source else ''}mounted at {mount}"


def full_filesystem(paths: Sequence[str]) -> str | None:
    """A description of the first filesystem holding one of ``paths`` that has no space left."""
    for path in paths:
        if _free_bytes(path) == 0:
            return describe_filesystem(path)
    return None


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return None  # read-only filesystems (squashfs, ISO) report 0 free: not what failed here
    return st.f_bavail * st.f_frsize


def _mount_source(mount: str) -> str | None:
    """The device (or pseudo filesystem) mounted at ``mount``, from /proc/self/mountinfo."""
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 4 and " - " in line and _unescape(fields[4]) == mount:
                    tail = line.split(" - ", 1)[1].split()
                    found = tail[1] if len(tail) > 1 else None  # the last mount there is the visible one
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes in octal (``\\040``)."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")
