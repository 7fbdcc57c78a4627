"""Toolchain trees: each toolchain's layers unpacked once per digest into the cache, shared by all actions.

``<cache dir>/toolchains/<digest>/`` is the root filesystem an action on that toolchain sees as
its read-only ``/``; ``<digest>`` is the digest over the layers' blob and sidecar digests, the same
values the action keys hold. A tree is made like a CAS entry:

- concurrency-safe: one ``flock`` per digest (``<digest>.lock``) serializes pbuild processes and
  the threads of one process (each thread opens the lock file itself, and flock locks belong to
  the open file, so they exclude each other too); the winner unpacks, the others find it done;
- crash- and ENOSPC-safe: unpacked into ``<digest>.<12 hex>.tmp/`` beside, renamed into place
  when complete. A tree name exists only for a complete tree; a temp dir is never used, and is
  removed by whoever next holds its digest's lock (or finds that lock free);
- verified: the blobs given here are CAS blobs the scheduler checked against their digests, and
  each layer's uncompressed stream must hash to the diff_id of its sidecar JSON.

Layers are unpacked by the launcher's hostile-tar-safe extractor and stacked by its flattener
(whiteouts and opaque directories applied), so a toolchain tree is the image's root as the
launcher would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, cast

from pbuild.engine.api import Action, File
from pbuild.engine.errors import BuildFailed
from pbuild.engine.hashing import digest_bytes
from pbuild.lib import atomicio, filelock
from pbuild.lib.digest import ContentDigest
from pbuild.tools.fstree import remove_tree

TREES_DIR = "toolchains"


def needed_files(action: Action) -> tuple[File, ...]:
    """What must be built before ``action`` runs: its inputs and its toolchain's layer files."""
    if action.toolchain is None:
        return action.inputs
    return (*action.inputs, *action.toolchain.files)


def tree_digest(file_digests: Sequence[ContentDigest]) -> ContentDigest:
    """The name of a toolchain tree: a digest over its layers' file digests, bottom first."""
    return digest_bytes(("toolchain-tree-v1\n" + "\n".join(file_digests)).encode())


@dataclass(frozen=True)
class LayerFiles:
    """One layer as the unpacker reads it: a verified blob and its sidecar JSON, on the host."""

    blob: str
    meta: str


class ToolchainTrees:
    """The toolchain trees of one cache directory."""

    def __init__(self, cache_dir: str) -> None:
        self.top = os.path.join(cache_dir, TREES_DIR)
        self._ready: set[str] = set()
        self._guard = threading.Lock()
        self._cleaned = False

    def tree(self, digest: str, layers: Sequence[LayerFiles] | Callable[[], Sequence[LayerFiles]], *,
             label: object) -> str:
        """The unpacked tree of ``layers`` (bottom first) named ``digest``, made on first need.

        ``layers`` may be a function, called only when the tree must be made (finding the
        verified blobs costs a hash of each when nothing vouches for them)."""
        path = os.path.join(self.top, digest)
        if digest in self._ready:
            return path
        if os.path.isdir(path):
            with self._guard:
                self._ready.add(digest)
            # Its last use, once per build, for least-recently-used eviction: on the lock file
            # beside it, as the folder's own mtime is in `pbuild run` stamps.
            with contextlib.suppress(OSError):
                os.utime(path + ".lock")
            return path
        os.makedirs(self.top, exist_ok=True)
        self._clean_stale_once()
        with filelock.acquire(os.path.join(self.top, digest + ".lock"), exclusive=True):
            if not os.path.isdir(path):
                _remove_temps(self.top, digest)  # a crashed unpacker's leftovers: never reused
                tmp = atomicio.temp_name(path)
                os.mkdir(tmp, 0o700)
                try:
                    root = _unpack(layers() if callable(layers) else layers, tmp, label)
                    os.chmod(root, 0o755)
                    atomicio.publish_dir(root, path)  # always wins: the lock keeps out other unpackers
                finally:
                    remove_tree(tmp, ignore_errors=True)
        with self._guard:
            self._ready.add(digest)
        return path

    def _clean_stale_once(self) -> None:
        """Remove temp trees of other digests whose lock is free (their unpacker is gone)."""
        with self._guard:
            if self._cleaned:
                return
            self._cleaned = True
        try:
            names = os.listdir(self.top)
        except OSError:
            return
        for digest in {d for d in map(atomicio.temp_target, names) if d is not None}:
            lock = try_lock(os.path.join(self.top, digest + ".lock"))
            if lock is None:
                continue  # being unpacked right now
            with lock:
                _remove_temps(self.top, digest)


def _unpack(layers: Sequence[LayerFiles], tmp: str, label: object) -> str:
    """Unpack ``layers`` below ``tmp``; returns the finished root (``tmp/root``)."""
    from pbuild.tools.launcher.errors import LauncherError
    from pbuild.tools.launcher.extract import decompressor, extract_layer
    from pbuild.tools.launcher.flatten import flatten

    root = os.path.join(tmp, "root")
    os.mkdir(root, 0o700)
    uppers: list[str] = []
    privileged = os.geteuid() == 0
    for number, layer in enumerate(layers):
        diff_id, media_type = _read_meta(layer, label)
        # The bottom layer goes straight into the root: its whiteouts hide nothing, so none are made.
        dest = root if number == 0 else os.path.join(tmp, f"layer-{number}")
        if number:
            os.mkdir(dest, 0o700)
            uppers.append(dest)
        try:
            with open(layer.blob, "rb") as raw:
                stream = decompressor(cast(IO[bytes], raw), media_type)
                extract_layer(stream, dest, diff_id=diff_id, privileged=privileged, keep_setid=False,
                              make_whiteout=(lambda name, fd: None) if number == 0 else None)
        except LauncherError as exc:
            raise BuildFailed(
                f"toolchain {label}: layer {number + 1} of {len(layers)} ({layer.blob}) is refused: {exc.message}",
                label=label,
                hint="the cached layer is damaged; run `pbuild clean --expunge` (or remove that blob) and build again",
            ) from None
    if uppers:
        flatten(uppers, root)
    return root


def _read_meta(layer: LayerFiles, label: object) -> tuple[str, str]:
    """The diff_id and media type a layer's sidecar JSON promises."""
    try:
        with open(layer.meta, "rb") as handle:
            meta = json.load(handle)
        return str(meta["diff_id"]), str(meta.get("media_type", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildFailed(f"toolchain {label}: cannot read the layer description {layer.meta}: {exc}",
                          label=label, hint="build again; the layer's action writes it") from None


def try_lock(path: str) -> filelock.FileLock | None:
    """``path``'s flock held exclusive, or None when another holds it (an unpacker; for `pbuild
    system prune`, also a program on the tree holding it shared) or it cannot be opened."""
    try:
        return filelock.try_acquire(path, exclusive=True)
    except OSError:
        return None


def _remove_temps(top: str, digest: str) -> None:
    """Remove every temp tree of ``digest``; call only while holding its lock."""
    try:
        names = os.listdir(top)
    except OSError:
        return
    for name in names:
        if atomicio.temp_target(name) == digest:
            remove_tree(os.path.join(top, name), ignore_errors=True)
