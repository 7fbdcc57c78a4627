"""Removing a file tree without ever following a symlink: the one ``rm -rf`` of pbuild.

Trees pbuild removes were written by others: an action's work folder, a container's upper layer,
an unpacked image, whatever was planted in the cache's ``tmp/``. Such a tree may hold symlinks to
anything of the user's and folders without write or search permission (images make them 0555,
overlayfs leaves ``work/work`` at 0000), so

- every step is relative to a folder opened with ``O_NOFOLLOW | O_DIRECTORY``: a name that is a
  symlink (or becomes one while we work) is unlinked as a name, never resolved;
- a permission is only ever changed on a folder this module has opened itself, through that very
  descriptor, so no path lookup can be redirected onto a file outside the tree;
- a folder on another filesystem than its parent (something mounted into the tree) is not entered:
  what is mounted there is not part of the tree.

``shutil.rmtree`` walks by descriptor too, but it gives up on a folder it cannot enter, and its
error hook only gets a path, and fixing permissions by path is exactly what a link redirects.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["remove_at", "remove_tree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_ALL = stat.S_IRWXU


def remove_tree(path: str, *, ignore_errors: bool = False) -> None:
    """Remove ``path``: a file, a symlink (not what it points at) or a folder with all it holds.

    A missing ``path`` is not an error. Folders inside the tree that deny their owner access are
    given owner rwx first. Everything that can be removed is; then the first failure is raised as an
    ``OSError`` naming the full path, unless ``ignore_errors``. The folders *above* ``path`` are the
    caller's: they are resolved as usual and never changed.
    """
    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise ValueError(f"remove_tree needs a path that names an entry, not {path!r}")
    errors: list[OSError] = []
    try:
        parent_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        errors.append(exc)
    else:
        try:
            _remove_entry(parent_fd, name, path, errors)
        finally:
            os.close(parent_fd)
    if errors and not ignore_errors:
        raise errors[0]


def remove_at(dir_fd: int, name: str, *, path: str | None = None) -> None:
    """Remove the entry ``name`` (one component) of the open folder ``dir_fd`` as
    :func:`remove_tree` removes a path: a link as a link, a folder with all it holds, nothing
    there is fine; the first failure is raised, naming ``path`` (default: ``name``)."""
    if name in ("", ".", "..") or "/" in name:
        raise ValueError(f"remove_at needs one name of an entry, not {name!r}")
    try:  # the common case when a layer is unpacked: a file, or nothing there (one syscall)
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except OSError as exc:
        raise _with_path(exc, path or name) from None
    errors: list[OSError] = []
    _remove_entry(dir_fd, name, path or name, errors)
    if errors:
        raise errors[0]


def _remove_entry(parent_fd: int, name: str, path: str, errors: list[OSError]) -> None:
    """Remove ``name`` in the open folder ``parent_fd`` (``path`` is its full name, for errors)."""
    try:
        parent_dev = os.fstat(parent_fd).st_dev
    except OSError as exc:
        errors.append(exc)
        return
    fd = _enter(parent_fd, name, path, parent_dev, errors)
    if fd is not None:
        _empty_and_remove(parent_fd, name, path, fd, errors)


def _enter(parent_fd: int, name: str, path: str, parent_dev: int, errors: list[OSError]) -> int | None:
    """The open folder ``name`` of ``parent_fd``, or ``None`` when there is nothing to walk into:
    a file or link (unlinked as a name), a folder gone since listing, or one with another
    filesystem mounted on it (reported, not entered)."""
    try:
        fd = _open_dir(parent_fd, name, path)
    except FileNotFoundError:
        return None
    except (NotADirectoryError, _Symlink):  # a file or link, or replaced by one since listing
        _unlink(parent_fd, name, path, errors, is_dir=False)
        return None
    except OSError as exc:
        errors.append(exc)
        return None
    if os.fstat(fd).st_dev != parent_dev:
        os.close(fd)
        errors.append(_mounted(path))
        return None
    return fd


def _empty_and_remove(top_parent_fd: int, top_name: str, top_path: str, top_fd: int,
                      errors: list[OSError]) -> None:
    """Depth first, without recursion (a deep tree must not hit Python's recursion limit): one open
    descriptor per level, each folder removed from its parent once it is empty."""
    # Each level: (parent fd, name in parent, full path, own fd, device, children left).
    stack: list[tuple[int, str, str, int, int, list[tuple[str, bool]]]] = []

    def push(parent_fd: int, name: str, path: str, fd: int) -> None:
        try:
            children = _list(fd, path)
        except OSError as exc:
            errors.append(exc)
            children = []
        stack.append((parent_fd, name, path, fd, os.fstat(fd).st_dev, children))

    push(top_parent_fd, top_name, top_path, top_fd)
    while stack:
        parent_fd, name, path, fd, dev, children = stack[-1]
        if children:
            child, is_dir = children.pop()
            child_path = os.path.join(path, child)
            if not is_dir:
                _unlink(fd, child, child_path, errors, is_dir=False)
                continue
            child_fd = _enter(fd, child, child_path, dev, errors)
            if child_fd is not None:
                push(fd, child, child_path, child_fd)
            continue
        stack.pop()
        os.close(fd)
        _unlink(parent_fd, name, path, errors, is_dir=True)


class _Symlink(OSError):
    """``name`` is a symlink: it is removed as a name."""


def _open_dir(parent_fd: int, name: str, path: str) -> int:
    """Open folder ``name`` of ``parent_fd`` without following a link, making it owner-accessible
    (through the descriptor) when it denies its owner read, write or search."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Symlink(errno.ELOOP, "symlink", path) from None
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise _with_path(exc, path) from None
        # No read permission on the folder itself: open it as a bare handle (O_PATH needs none)
        # and change the mode of exactly that inode, through /proc/self/fd (fchmod refuses
        # O_PATH handles). O_NOFOLLOW | O_DIRECTORY: a link or a file here fails instead.
        try:
            handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError as again:
            if again.errno == errno.ELOOP:
                raise _Symlink(errno.ELOOP, "symlink", path) from None
            raise _with_path(again, path) from None
        try:
            os.chmod(f"/proc/self/fd/{handle}", stat.S_IMODE(os.fstat(handle).st_mode) | _OWNER_ALL)
        except OSError:
            raise _with_path(exc, path) from None
        finally:
            os.close(handle)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as again:
            raise _with_path(again, path) from None
    mode = os.fstat(fd).st_mode
    if mode & _OWNER_ALL != _OWNER_ALL:
        try:
            os.fchmod(fd, stat.S_IMODE(mode) | _OWNER_ALL)
        except OSError:
            pass  # not ours: removing its entries fails and says so
    return fd


def _list(fd: int, path: str) -> list[tuple[str, bool]]:
    """(name, is a real folder) of each entry; a link to a folder counts as not a folder."""
    try:
        with os.scandir(fd) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    except OSError as exc:
        raise _with_path(exc, path) from None


def _unlink(parent_fd: int, name: str, path: str, errors: list[OSError], *, is_dir: bool) -> None:
    try:
        if is_dir:
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # a folder appeared under this name since we looked: remove it too
        _remove_entry(parent_fd, name, path, errors)
    except OSError as exc:
        errors.append(_with_path(exc, path))


def _with_path(exc: OSError, path: str) -> OSError:
    """The same error, naming the full path instead of a name relative to a descriptor."""
    return type(exc)(exc.errno, exc.strerror, path)


def _mounted(path: str) -> OSError:
    return OSError(errno.EBUSY, "a filesystem is mounted here; not removing what it holds", path)
