"""The layer store: each layer unpacked once, under its diff_id, shared by every container.

``$PBUILD_LAYER_STORE`` (tests) or ``$XDG_DATA_HOME/pbuild/layers`` (default
``~/.local/share/pbuild/layers``), kept 0700 (:func:`dirs.ensure_private_dir`): its files are
the images' files, setuid programs among them. Where it cannot be made private (another user
owns it), layers are unpacked without setuid and setgid bits, and the user is told.

A layer is unpacked into a locked temporary directory (:func:`dirs.scratch_dir`) and renamed
into place, so a crash or a concurrent launcher never leaves a half-unpacked layer visible; two
launchers racing on one layer both unpack and one rename wins. Temporaries of killed launchers
are removed by the next launcher.

Layers are removed only by ``pbuild system prune``, never while a container may use them. A
launcher holds a shared lock on ``gc.lock`` (:func:`lock_store`) from before it reads the image
until its container is running with the layers' diff_ids in its record (``extra["layers"]``);
the pruner holds it exclusive while it lists containers and removes layers none of them names.
So a layer is never taken from under a container being set up, and a running one names its own.
A layer is removed by renaming it into ``tmp`` first: a pruner killed halfway leaves a stale
temporary, never a half-removed layer that ``isdir`` would take for a whole one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, cast

from pbuild.lib import atomicio, filelock
from pbuild.tools.launcher import dirs
from pbuild.tools.launcher.errors import LauncherError, RefusedLayer
from pbuild.tools.launcher.image import Image, Layer


def store_root() -> str:
    """Where layers live; created on first use."""
    explicit = os.environ.get("PBUILD_LAYER_STORE")
    if explicit:
        return os.path.abspath(explicit)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "pbuild", "layers")


LOCK_FILE = "gc.lock"


def lock_store(
    root: str, *, exclusive: bool, on_wait: Callable[[], None] | None = None
) -> filelock.FileLock:
    """Hold the store's ``gc.lock`` (creating the store, private, if needed): shared while a
    container is set up, exclusive while layers are pruned. ``on_wait`` is called once if the
    lock is busy."""
    try:
        dirs.ensure_private_dir(root)
        lock = filelock.acquire(os.path.join(root, LOCK_FILE), exclusive=exclusive, on_wait=on_wait)
    except OSError as e:
        raise LauncherError(
            f"cannot lock the layer store {root}: {e.strerror}",
            hint="set PBUILD_LAYER_STORE or XDG_DATA_HOME to a directory you can write",
        ) from None
    return lock


def stored_layers(root: str) -> dict[str, str]:
    """diff_id -> directory of every layer in the store at ``root``."""
    found: dict[str, str] = {}
    try:
        algorithms = sorted(os.listdir(root))
    except FileNotFoundError:
        return found
    for algorithm in algorithms:
        folder = os.path.join(root, algorithm)
        if algorithm == "tmp" or not algorithm.isalnum() or not os.path.isdir(folder):
            continue
        for hexdigest in sorted(os.listdir(folder)):
            path = os.path.join(folder, hexdigest)
            if hexdigest.isalnum() and os.path.isdir(path) and not os.path.islink(path):
                found[f"{algorithm}:{hexdigest}"] = path
    return found


def remove_layer(root: str, diff_id: str) -> None:
    """Remove one layer (the caller holds the exclusive :func:`lock_store`): renamed into
    ``tmp`` first, so it leaves the store in one step, then deleted."""
    from pbuild.tools.fstree import remove_tree

    path = layer_path(root, diff_id)
    tmp = os.path.join(root, "tmp")
    os.makedirs(tmp, exist_ok=True)
    doomed = os.path.join(tmp, f"removed-{os.urandom(6).hex()}")  # no lock file: stale if we die
    try:
        os.rename(path, doomed)  # atomicio-exempt: a removal, out of its place to a fresh name
    except FileNotFoundError:
        return
    remove_tree(doomed)


def layer_path(root: str, diff_id: str) -> str:
    algorithm, _, hexdigest = diff_id.partition(":")
    if not hexdigest.isalnum() or not algorithm.isalnum():
        raise RefusedLayer(f"malformed diff_id {diff_id!r} in the image config")
    return os.path.join(root, algorithm, hexdigest)


def open_store(root: str, notify: Callable[[str], None] | None = None) -> bool:
    """Create or tighten the store at ``root`` and clean what killed launchers left in it;
    return whether it is private (then setuid bits of layers may be kept)."""
    try:
        private = dirs.ensure_private_dir(root)
    except OSError as e:
        raise LauncherError(
            f"cannot create the layer store {root}: {e.strerror}",
            hint="set PBUILD_LAYER_STORE or XDG_DATA_HOME to a directory you can write",
        ) from None
    if not private and notify:
        notify(
            f"the layer store {root} is not private ({dirs.describe_mode(root)}); setuid and "
            "setgid bits of new layers are dropped. Use a store of your own (PBUILD_LAYER_STORE)."
        )
    dirs.clean_stale(os.path.join(root, "tmp"))
    return private


def ensure_layers(
    image: Image, root: str | None = None, notify: Callable[[str], None] | None = None
) -> list[str]:
    """Return the unpacked directory of each layer of ``image``, bottom first, unpacking those
    not yet in the store."""
    root = root or store_root()
    private = open_store(root, notify)
    paths = []
    for layer in image.layers:
        path = layer_path(root, layer.diff_id)
        if not os.path.isdir(path):
            _unpack(layer, path, root, notify, keep_setid=private and os.geteuid() == 0)
        paths.append(path)
    return paths


def _unpack(
    layer: Layer, path: str, root: str, notify: Callable[[str], None] | None, keep_setid: bool
) -> None:
    from pbuild.tools.launcher.extract import decompressor, extract_layer

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with dirs.scratch_dir(os.path.join(root, "tmp"), os.path.basename(path)[:16]) as tmp:
            with layer.open_blob() as raw:
                # Kept in a name until finish(): a dropped buffer over ``raw`` would close it.
                stream = decompressor(cast(IO[bytes], raw), layer.media_type)
                try:
                    report = extract_layer(
                        stream,
                        tmp,
                        diff_id=layer.diff_id,
                        privileged=os.geteuid() == 0,
                        keep_setid=keep_setid,
                    )
                except LauncherError:
                    raw.finish()  # a blob unlike its descriptor explains any failure best
                    raise
                raw.finish()  # the rest of the blob, and its digest and size checked
            os.chmod(tmp, 0o755)  # the layer's own root, as any other; the store's root is the fence
            if report.skipped and notify:
                notify(f"layer {layer.diff_id[:19]}: skipped {', '.join(report.skipped)}")
            atomicio.publish_dir(tmp, path)  # False: another launcher was faster, and its copy serves
    except OSError as e:
        raise LauncherError(f"cannot unpack layer {layer.diff_id} into {path}: {e}") from None


