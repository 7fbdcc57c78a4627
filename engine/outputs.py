"""Output collection: an action's declared outputs, checked and moved into the CAS.

Two jobs, one rule: an action result holds exactly the outputs its action declares.
:func:`collect_outputs` takes them from the folder an action wrote (every declared output must be
there; a symlink is replaced by the file it names inside that folder, never followed out of it),
and :func:`undeclared_outputs` holds a result from a cache to the same declaration before any of
it is used.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Collection, Iterable

from pbuild.engine.api import Action
from pbuild.engine.errors import BuildFailed
from pbuild.engine.labels import Label
from pbuild.engine.store import ActionResult, LocalStore, OutputRecord


def collect_outputs(action: Action, top: str, store: LocalStore) -> ActionResult:
    """Move ``action``'s declared outputs from ``top`` into ``store``; each must exist."""
    records: list[OutputRecord] = []
    directories: list[str] = []
    for output in action.outputs:
        path = os.path.join(top, output.path)
        if output.is_directory:
            if not os.path.isdir(path):
                raise BuildFailed(f"{action.mnemonic} did not create its declared directory {output.path}",
                                  label=action.owner, hint="the command must write every declared output")
            directories.append(output.path)
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    records.append(_ingest(full, os.path.relpath(full, top), top, action.owner, store))
            continue
        if not os.path.lexists(path):
            raise BuildFailed(
                f"{action.mnemonic} did not write its declared output {output.path}",
                label=action.owner,
                hint="the command must write every declared output ($@ or $(OUTS) in a genrule)",
            )
        if os.path.isdir(path):
            raise BuildFailed(f"declared output {output.path} is a folder, not a file", label=action.owner)
        records.append(_ingest(path, output.path, top, action.owner, store))
    return ActionResult(tuple(records), tuple(directories))


def _ingest(full: str, rel: str, top: str, owner: Label, store: LocalStore) -> OutputRecord:
    if os.path.islink(full):
        target = _resolve_inside(full, top)
        if target is None:
            raise BuildFailed(
                f"output {rel} is a symlink to {os.readlink(full)}, which is not a file inside the sandbox",
                label=owner,
                hint="write the output's content (cp, not ln -s), from declared inputs only",
            )
        os.unlink(full)
        shutil.copyfile(target, full)
    executable = os.access(full, os.X_OK)
    digest, size = store.put_file(full, executable=executable, move=True)
    return OutputRecord(rel, digest, size, executable)


def _resolve_inside(link: str, top: str) -> str | None:
    """The file a symlink output names, resolved within ``top`` (the exec root), or None.

    Relative links are followed by hand, one hop at a time; absolute ones and anything leaving
    ``top`` are refused.
    """
    top = os.path.normpath(top)
    current = link
    for _ in range(40):
        target = os.readlink(current)
        if os.path.isabs(target):
            return None  # absolute links name the sandbox's paths (or the host's): never portable
        target = os.path.join(os.path.dirname(current), target)
        target = os.path.normpath(target)
        if not (target + "/").startswith(top + "/"):
            return None
        if os.path.islink(target):
            current = target
            continue
        return target if os.path.isfile(target) else None
    return None


def undeclared_outputs(paths: Iterable[str], directories: Collection[str],
                       declared_files: Collection[str], declared_dirs: Collection[str]) -> str | None:
    """Why a cached result does not write exactly its action's declared outputs, or ``None``.

    ``paths`` are the result's files and ``directories`` its directory outputs. A result is
    accepted only if it holds every declared file, as a file, and nothing else besides files
    inside the declared directories (normalized paths, so no ``..`` leaves a tree, and no file
    where a tree needs a folder). Anything else would let a poisoned cache entry write sources,
    git hooks or other outputs of the workspace.
    """
    if set(directories) != set(declared_dirs):
        return (f"its directory outputs {sorted(directories)} are not the declared ones "
                f"{sorted(declared_dirs)}")
    seen: set[str] = set()
    in_trees: list[str] = []
    for path in paths:
        if path in seen:
            return f"it lists {path} twice"
        seen.add(path)
        if path in declared_files:
            continue
        if path in declared_dirs:
            return f"it has a file {path} where the action declares a directory"
        if posixpath.normpath(path) != path or not any(path.startswith(d + "/") for d in declared_dirs):
            return f"it writes {path}, which is not a declared output"
        in_trees.append(path)
    for path in sorted(declared_files):
        if path not in seen:
            return f"it lacks the declared output {path}"
    for path in in_trees:
        parent = posixpath.dirname(path)
        while parent and parent not in declared_dirs:
            if parent in seen:
                return f"it has a file {parent} and also files inside it"
            parent = posixpath.dirname(parent)
    return None
