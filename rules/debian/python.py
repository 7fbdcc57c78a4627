"""What Debian's Python maintainer scripts leave in a tree, done without running them.

pbuild unpacks packages without dpkg, so no ``postinst`` runs. For a closure with a CPython
(``python3.X-minimal``) three of their effects matter to the result:

* bytecode: ``python3.X``'s and ``libpython3.X-minimal``'s postinst run ``py_compile`` over the
  standard library, and every ``python3-*`` package's postinst runs ``py3compile`` over its
  modules in ``/usr/lib/python3/dist-packages``. Without it every start compiles the standard
  library in memory again (``import numpy`` 2.7x slower than on a Debian host). pbuild compiles
  the same files with the tree's *own* interpreter, run on the tree (so the Python running
  pbuild never shows in the bytes), as hash-based ``.pyc`` (Debian writes mtime-based ones,
  which a layer with mtime 0 would invalidate). Skipped, as Debian does: files that do not
  compile (``py_compile`` reports and skips them; Python 2 sources, ``lib2to3`` test data) and
  symlinks whose target is not in the tree (the postinst filters a dangling
  ``sitecustomize.py``). No optimized (``-O``) bytecode: Debian writes it only when
  ``/etc/python/debian_config`` asks for it, which its default does not.
* ``/usr/bin/python3``: the ``python3`` (or ``python3-minimal``) package ships that link;
  a closure with only ``python3.X-minimal`` gets it here.
* ``/usr/local/lib/python3.X/dist-packages``, which ``python3.X-minimal``'s postinst creates.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from pbuild.engine.api import ActionIO
from pbuild.rules.oci import pyc
from pbuild.rules.oci.layerwriter import LayerEntry, merge_entries


@dataclass(frozen=True)
class TreePython:
    """The CPython of a closure: ``/usr/bin/python3.11`` and ``3.11``."""

    interpreter: str
    version: str


def compiled_dirs(version: str) -> tuple[str, ...]:
    """Where Debian byte-compiles for CPython ``version``: its standard library and dist-packages."""
    return (f"usr/lib/python{version}/", "usr/lib/python3/dist-packages/")


def configure_python(io: ActionIO, entries: list[LayerEntry], python: TreePython, *,
                     jobs: int = 1, on_toolchain: bool = False) -> list[LayerEntry]:
    """``entries`` as Debian's Python maintainer scripts would leave them (see the module docstring).

    Runs ``python`` on the tree the entries make, unpacked in a scratch folder (see
    :func:`scratch_folder`) and removed after; with
    ``on_toolchain`` on the action's toolchain tree instead (another platform's tree, whose
    interpreter this machine cannot run: the primary platform's CPython of the same X.Y compiles
    it, and ``.pyc`` bytes do not depend on the platform).
    """
    added = python_links(entries, python)
    modules = modules_to_compile(entries, python.version)
    if not modules:
        return entries + added
    work = [(source, "/" + entry.path) for entry, source in modules]
    if on_toolchain:
        results = pyc.compile_on_toolchain(io, work, python=python.interpreter, root=None, jobs=jobs)
    else:
        scratch = scratch_folder(io.tmpdir, _tree_size(entries))
        try:
            tree = os.path.join(scratch, "tree")
            unpack_entries(entries + added, tree)
            results = pyc.compile_on_toolchain(io, work, python=python.interpreter, root=tree, jobs=jobs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return entries + added + pyc.pyc_entries([entry for entry, _ in modules], results, python.version)


#: Memory filesystems tried for the throwaway tree, first one first. Creating its ~1,350 files
#: (the python3 closure) cost 0.83 CPU-seconds on this project's ext4 disk and 0.05 s on tmpfs
#: (rules/debian/python.py's unpack_entries alone, medians of 5, same run); removing them again
#: cost the engine as much once more.
MEMORY_FOLDERS = ("/dev/shm",)
#: The share of a memory filesystem's free space one tree may take; larger trees go to disk.
_MEMORY_SHARE = 4


def scratch_folder(tmpdir: str, size: int) -> str:
    """A new empty folder for a tree of ``size`` bytes: on a memory filesystem when one has room
    (``size`` at most a quarter of its free space, mounted without noexec), else below ``tmpdir``. The caller removes it.

    Where the tree lies is invisible in the result: the interpreter sees it as ``/`` and names
    each module by its in-image path.
    """
    for folder in MEMORY_FOLDERS:
        try:
            free = os.statvfs(folder)
            # The tree's interpreter runs from there: a noexec mount will not do.
            if (not free.f_flag & os.ST_NOEXEC and size * _MEMORY_SHARE <= free.f_bavail * free.f_frsize
                    and os.access(folder, os.W_OK | os.X_OK)):
                return tempfile.mkdtemp(prefix="pbuild-tree-", dir=folder)
        except OSError:
            continue  # absent or not usable: the next one, then the disk
    return tempfile.mkdtemp(prefix="tree-", dir=tmpdir)


def _tree_size(entries: Sequence[LayerEntry]) -> int:
    """Bytes the files of ``entries`` take (those held in memory; host files counted by stat)."""
    total = 0
    for entry in entries:
        if entry.kind == "file":
            total += len(entry.data) if entry.data is not None else os.stat(entry.source or "").st_size
    return total


def python_links(entries: Sequence[LayerEntry], python: TreePython) -> list[LayerEntry]:
    """``/usr/bin/python3`` and the ``/usr/local`` site directory, where no package shipped them."""
    shipped = {e.path for e in entries}
    out = []
    if "usr/bin/python3" not in shipped:
        out.append(LayerEntry("usr/bin/python3", "symlink", 0o777, target=posixpath.basename(python.interpreter),
                              origin="python3 (the default interpreter's link)"))
    for path in (f"usr/local/lib/python{python.version}", f"usr/local/lib/python{python.version}/dist-packages"):
        if path not in shipped:
            out.append(LayerEntry(path, "dir", 0o755, origin=f"python{python.version}-minimal (postinst)"))
    return out


def modules_to_compile(entries: Sequence[LayerEntry], version: str) -> list[tuple[LayerEntry, bytes]]:
    """The ``.py`` files Debian compiles, each with its source (a symlink's from its target in the tree)."""
    dirs = compiled_dirs(version)
    by_path = {e.path: e for e in entries}
    out = []
    for entry in entries:
        if not (entry.path.endswith(".py") and entry.path.startswith(dirs)) or entry.kind not in ("file", "symlink"):
            continue
        target = _resolve(by_path, entry)
        if target is None:
            continue
        out.append((entry, target.data if target.data is not None else _read(target.source)))
    return out


def _resolve(by_path: dict[str, LayerEntry], entry: LayerEntry) -> LayerEntry | None:
    """The file a symlink ends at inside the tree (following links at the last component), or None."""
    for _ in range(40):  # the kernel's limit on nested links
        if entry.kind == "file":
            return entry
        if entry.kind != "symlink":
            return None
        base = "" if entry.target.startswith("/") else posixpath.dirname(entry.path)
        path = posixpath.normpath(posixpath.join(base, entry.target.lstrip("/")))
        found = by_path.get(path)
        if found is None:
            return None
        entry = found
    return None


def unpack_entries(entries: Sequence[LayerEntry], root: str) -> None:
    """Write ``entries`` as a real directory tree at ``root`` (for running its programs).

    Modes are set explicitly, so the tree does not depend on the umask; directories get theirs
    last, so a read-only one can still be filled.
    """
    os.makedirs(root)
    dirs: list[tuple[str, int]] = []
    for entry in merge_entries(entries):
        path = os.path.join(root, entry.path)
        if entry.kind == "dir":
            os.makedirs(path, exist_ok=True)
            dirs.append((path, entry.mode))
        elif entry.kind == "file":
            data = entry.data if entry.data is not None else _read(entry.source)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as handle:
                handle.write(data)
                os.fchmod(handle.fileno(), entry.mode)
        elif entry.kind == "symlink":
            os.symlink(entry.target, path)
        elif entry.kind == "hardlink":
            os.link(os.path.join(root, entry.target), path)
    for path, mode in reversed(dirs):
        os.chmod(path, mode)


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as handle:
        return handle.read()
