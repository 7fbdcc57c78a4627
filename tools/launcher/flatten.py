"""The flattened root filesystem: the layers copied into one directory, bottom first, with
whiteouts and opaque directories applied. It is the fallback where overlayfs cannot be mounted
(or with ``PBUILD_LAUNCHER_NO_OVERLAY=1``), and lives in the container's private directory.

Every path is resolved inside the copy (:class:`inroot.RootDir`), so the image's own links are
followed as the container would follow them, inside its root: with ``var/run -> /run`` in a lower
layer, an upper layer's ``var/run/x`` becomes ``<root>/run/x``; a link ``d -> /home`` or
``d -> ../../../home`` leads to ``<root>/home``, never to the host's. A link that leads nowhere
(or to a file) is replaced by the upper layer's directory, as overlayfs would show it. Whiteouts
and replaced entries remove the link itself, never what it points to.
"""

from __future__ import annotations

import os
import stat

from pbuild.tools.fstree import remove_at
from pbuild.tools.launcher.extract import OPAQUE_XATTR
from pbuild.tools.launcher.inroot import DIR_FLAGS, RootDir, clear_dir


def flatten(layer_dirs: list[str], dest: str) -> None:
    """Copy the unpacked ``layer_dirs`` (bottom first) into the existing directory ``dest``."""
    privileged = os.geteuid() == 0
    with RootDir(dest) as root:
        for layer in layer_dirs:
            source = os.open(layer, DIR_FLAGS)
            try:
                _merge(source, root, [], privileged)
            finally:
                os.close(source)


def _merge(source: int, root: RootDir, parts: list[str], privileged: bool) -> None:
    """Copy the layer directory ``source`` onto the directory ``parts`` of the root."""
    target = root.open_dir(parts, create=True)
    try:
        if parts and _is_opaque(source):
            clear_dir(target)  # what the lower layers had here is hidden
        with os.scandir(source) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                followed = _make_dir(name, target, root, [*parts, name])
                child = os.open(name, DIR_FLAGS, dir_fd=source)
                try:
                    _merge(child, root, [*parts, name], privileged)
                finally:
                    os.close(child)
                if not followed:  # a followed link keeps its target's owner and mode
                    _copy_dir_metadata(name, target, st, privileged)
                continue
            remove_at(target, name)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue  # a whiteout: the lower entry is gone, and so is this one
            _copy_entry(source, name, target, st, privileged)
    finally:
        os.close(target)


def _make_dir(name: str, target: int, root: RootDir, parts: list[str]) -> bool:
    """Make ``name`` in ``target`` a directory for a layer's directory; True when it is a link
    to a directory inside the root, which is kept and followed."""
    try:
        st = os.stat(name, dir_fd=target, follow_symlinks=False)
    except FileNotFoundError:
        os.mkdir(name, 0o700, dir_fd=target)  # its own mode once its entries are in
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    if stat.S_ISLNK(st.st_mode):
        try:
            os.close(root.open_dir(parts))
            return True
        except OSError:
            pass  # leads nowhere in the root, or to a file: the directory replaces the link
    remove_at(target, name)
    os.mkdir(name, 0o700, dir_fd=target)
    return False


def _copy_entry(source: int, name: str, target: int, st: os.stat_result, privileged: bool) -> None:
    """Copy one non-directory ``name`` from ``source`` to ``target`` (where nothing is now)."""
    mode = stat.S_IMODE(st.st_mode)
    times = (st.st_atime_ns, st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode):
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source)
        try:
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=target)  # fmt: skip
            try:
                while os.sendfile(dst, src, None, 1 << 30):
                    pass
                if privileged:  # before the mode: chown clears setuid bits
                    os.fchown(dst, st.st_uid, st.st_gid)
                os.fchmod(dst, mode)
                os.utime(dst, ns=times)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=source), name, dir_fd=target)
        if privileged:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=target, follow_symlinks=False)
        os.utime(name, ns=times, dir_fd=target, follow_symlinks=False)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(name, 0o600, dir_fd=target)
        if privileged:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=target, follow_symlinks=False)
        os.chmod(name, mode, dir_fd=target)  # just made, in our private copy: not a link
        os.utime(name, ns=times, dir_fd=target, follow_symlinks=False)
    # Nothing else is unpacked into a layer (device nodes are skipped, whiteouts handled above).


def _copy_dir_metadata(name: str, target: int, st: os.stat_result, privileged: bool) -> None:
    fd = os.open(name, DIR_FLAGS, dir_fd=target)
    try:
        if privileged:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def _is_opaque(directory: int) -> bool:
    try:
        return os.getxattr(directory, OPAQUE_XATTR) == b"y"
    except OSError:
        return False
