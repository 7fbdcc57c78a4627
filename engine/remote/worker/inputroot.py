"""An action's input root, from the server's Directory messages to an exec root on disk.

The Directory graph is hostile until checked: every name must be one path component (no
``..``, no ``/``, not empty, no duplicates), a symlink may only point inside the root, the graph
is bounded in depth and entries, and each message must hash to the digest its parent names
(the worker CAS verifies every blob). Files are hard-linked read-only from the worker CAS
(executables from their 0755 copy); inputs inside a folder the action may write are copies, so
an action can never write through a link into the store.

pbuild's toolchain layers (``actionformat.TOOLCHAIN_DIR/NN/{blob,meta}``) are not laid out: they
are returned apart, for the worker to unpack into a toolchain tree that the action sees as ``/``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from dataclasses import dataclass

from pbuild.engine.remote import actionformat
from pbuild.engine.remote._execwire import Directory, check_name
from pbuild.engine.remote._wire import Digest, WireError
from pbuild.engine.remote.worker.cas import WorkerCas

MAX_DEPTH = 128
MAX_ENTRIES = 1_000_000


class InputRootError(Exception):
    """The input root is refused (hostile or malformed); the message says what and where."""


@dataclass(frozen=True)
class InputFile:
    path: str  # exec-root-relative
    digest: Digest
    executable: bool


@dataclass(frozen=True)
class InputTree:
    """What a checked input root holds, toolchain layers apart (bottom first: (blob, meta))."""

    files: tuple[InputFile, ...]
    dirs: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]  # (path, target)
    toolchain_layers: tuple[tuple[Digest, Digest], ...]

    def blobs(self) -> list[Digest]:
        """Every file blob, the toolchain's included."""
        out = [f.digest for f in self.files]
        for blob, meta in self.toolchain_layers:
            out += [blob, meta]
        return out


def read_tree(cas: WorkerCas, root: Digest) -> InputTree:
    """Fetch and check the Directory graph below ``root`` (level by level, each level's
    messages in one batch). Raises :class:`InputRootError`, or the CAS's errors."""
    files: list[InputFile] = []
    dirs: list[str] = []
    links: list[tuple[str, str]] = []
    level: list[tuple[str, Digest]] = [("", root)]
    entries = 0
    for depth in range(MAX_DEPTH + 1):
        if not level:
            break
        if depth == MAX_DEPTH:
            raise InputRootError(f"the input root is deeper than {MAX_DEPTH} folders (at {level[0][0]!r})")
        cas.fetch(d for _, d in level)
        below: list[tuple[str, Digest]] = []
        for path, digest in level:
            try:
                directory = Directory.decode(cas.read(digest))
            except (WireError, UnicodeDecodeError) as exc:
                raise InputRootError(f"the Directory message of {path or 'the input root'!r} is undecodable "
                                     f"({exc})") from None
            seen: set[str] = set()
            entries += len(directory.files) + len(directory.directories) + len(directory.symlinks)
            if entries > MAX_ENTRIES:
                raise InputRootError(f"the input root has more than {MAX_ENTRIES} entries")
            for name in [*(f.name for f in directory.files), *(d.name for d in directory.directories),
                         *(s.name for s in directory.symlinks)]:
                problem = check_name(name)
                if problem is not None:
                    raise InputRootError(f"refused: the input root's folder {path or '.'!r} has an entry with "
                                         f"{problem}")
                if name in seen:
                    raise InputRootError(f"refused: the input root's folder {path or '.'!r} names {name!r} twice")
                seen.add(name)
            for f in directory.files:
                files.append(InputFile(posixpath.join(path, f.name) if path else f.name, f.digest, f.is_executable))
            for d in directory.directories:
                child = posixpath.join(path, d.name) if path else d.name
                dirs.append(child)
                below.append((child, d.digest))
            for s in directory.symlinks:
                link = posixpath.join(path, s.name) if path else s.name
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), s.target))
                if not s.target or s.target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise InputRootError(f"refused: the input root's symlink {link!r} points out of the root "
                                         f"({s.target!r})")
                links.append((link, s.target))
        level = below
    return _split_toolchain(InputTree(tuple(files), tuple(dirs), tuple(links), ()))


def _split_toolchain(tree: InputTree) -> InputTree:
    """Take ``.pbuild/toolchain/NN/{blob,meta}`` out of the tree, as (blob, meta) layers."""
    prefix = actionformat.TOOLCHAIN_DIR + "/"
    top = actionformat.TOOLCHAIN_DIR.split("/", 1)[0]
    parts: dict[int, dict[str, Digest]] = {}
    rest: list[InputFile] = []
    for f in tree.files:
        if not (f.path == top or f.path.startswith(top + "/")):
            rest.append(f)
            continue
        tail = f.path[len(prefix):] if f.path.startswith(prefix) else ""
        folder, _, kind = tail.partition("/")
        if not (len(folder) == 2 and folder.isdigit() and kind in ("blob", "meta")):
            raise InputRootError(f"refused: {f.path!r} is not a toolchain layer file ({prefix}NN/blob or meta)")
        parts.setdefault(int(folder), {})[kind] = f.digest
    layers: list[tuple[Digest, Digest]] = []
    for index in range(len(parts)):
        layer = parts.get(index)
        if layer is None or set(layer) != {"blob", "meta"}:
            raise InputRootError(f"refused: toolchain layer {index:02d} is incomplete or missing "
                                 f"(layers must be numbered from 00, each with blob and meta)")
        layers.append((layer["blob"], layer["meta"]))
    if any(p == top or p.startswith(top + "/") for p, _ in tree.symlinks):
        raise InputRootError(f"refused: a symlink in {top}/")
    dirs = tuple(d for d in tree.dirs if not (d == top or d.startswith(top + "/")))
    return InputTree(tuple(rest), dirs, tree.symlinks, tuple(layers))


def lay_out(cas: WorkerCas, tree: InputTree, exec_root: str, writable: tuple[str, ...]) -> None:
    """Create the exec root: folders, files (linked, or copied inside ``writable`` folders),
    symlinks. ``exec_root`` must exist and be empty; every path was checked by :func:`read_tree`."""
    made = {""}
    for rel in (*tree.dirs, *writable):
        if rel not in made:
            os.makedirs(os.path.join(exec_root, rel), exist_ok=True)
            made.add(rel)
    for f in tree.files:
        parent = posixpath.dirname(f.path)
        if parent not in made:
            os.makedirs(os.path.join(exec_root, parent), exist_ok=True)
            made.add(parent)
        source = cas.executable_path(f.digest) if f.executable else cas.path(f.digest.hash)
        dest = os.path.join(exec_root, f.path)
        # A link inside a writable folder would let the action write into the store: copied.
        inside_writable = any(not w or f.path.startswith(w + "/") for w in writable)
        if inside_writable or not _link(source, dest):
            shutil.copyfile(source, dest)
            os.chmod(dest, 0o755 if f.executable else 0o644)
    for path, target in tree.symlinks:
        parent = posixpath.dirname(path)
        if parent not in made:
            os.makedirs(os.path.join(exec_root, parent), exist_ok=True)
            made.add(parent)
        os.symlink(target, os.path.join(exec_root, path))


def _link(source: str, dest: str) -> bool:
    try:
        os.link(source, dest)
        return True
    except OSError:
        return False
