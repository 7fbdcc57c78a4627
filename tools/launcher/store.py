"""The layer store: each layer unpacked once, under its diff_id, shared by every container.

``$PBUILD_LAYER_STORE`` (tests) or ``$XDG_DATA_HOME/pbuild/layers`` (default
``~/.local/share/pbuild/layers``). A layer is unpacked into a private temporary directory and
renamed into place, so a crash or a concurrent launcher never leaves a half-unpacked layer
visible; two launchers racing on one layer both unpack and one rename wins.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from pbuild.tools.fstree import remove_tree
from pbuild.tools.launcher.errors import LauncherError, LayerError
from pbuild.tools.launcher.image import Image, Layer


def store_root() -> str:
    """Where layers live; created on first use."""
    explicit = os.environ.get("PBUILD_LAYER_STORE")
    if explicit:
        return os.path.abspath(explicit)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "pbuild", "layers")


def layer_path(root: str, diff_id: str) -> str:
    algorithm, _, hexdigest = diff_id.partition(":")
    if not hexdigest.isalnum() or not algorithm.isalnum():
        raise LayerError(f"malformed diff_id {diff_id!r} in the image config")
    return os.path.join(root, algorithm, hexdigest)


def ensure_layers(
    image: Image, root: str | None = None, notify: Callable[[str], None] | None = None
) -> list[str]:
    """Return the unpacked directory of each layer of ``image``, bottom first, unpacking those
    not yet in the store."""
    root = root or store_root()
    paths = []
    for layer in image.layers:
        path = layer_path(root, layer.diff_id)
        if not os.path.isdir(path):
            _unpack(layer, path, root, notify)
        paths.append(path)
    return paths


def _unpack(layer: Layer, path: str, root: str, notify: Callable[[str], None] | None) -> None:
    tmp_root = os.path.join(root, "tmp")
    os.makedirs(tmp_root, exist_ok=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from pbuild.tools.launcher.extract import decompressor, extract_layer

    tmp = os.path.join(tmp_root, f"{os.path.basename(path)[:16]}-{os.urandom(6).hex()}")
    os.mkdir(tmp, 0o755)
    try:
        with layer.open_blob() as raw:
            report = extract_layer(
                decompressor(raw, layer.media_type), tmp, diff_id=layer.diff_id, privileged=os.geteuid() == 0
            )
        if report.skipped and notify:
            notify(f"layer {layer.diff_id[:19]}: skipped {', '.join(report.skipped)}")
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.isdir(path):  # anything but "another launcher was faster"
                raise
    except OSError as e:
        raise LauncherError(f"cannot unpack layer {layer.diff_id} into {path}: {e}") from None
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)


def flatten(layer_dirs: list[str], dest: str) -> None:
    """Copy the layers into one directory, applying whiteouts and opaque directories: the
    fallback root filesystem where overlayfs cannot be mounted."""
    import shutil

    for layer in layer_dirs:
        for directory, dirnames, filenames in os.walk(layer):
            rel = os.path.relpath(directory, layer)
            target_dir = dest if rel == "." else os.path.join(dest, rel)
            if rel != "." and _is_opaque(directory) and os.path.isdir(target_dir):
                remove_tree(target_dir)
            if not os.path.isdir(target_dir):
                if os.path.lexists(target_dir):
                    os.unlink(target_dir)
                os.makedirs(target_dir, exist_ok=True)
            shutil.copystat(directory, target_dir, follow_symlinks=False)
            for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(directory, d)))]:
                source = os.path.join(directory, name)
                target = os.path.join(target_dir, name)
                st = os.lstat(source)
                if os.path.lexists(target) and not (stat.S_ISDIR(st.st_mode) and os.path.isdir(target)):
                    if os.path.isdir(target) and not os.path.islink(target):
                        remove_tree(target)
                    else:
                        os.unlink(target)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    continue  # a whiteout: the lower entry is gone, and so is this one
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(source), target)
                else:
                    shutil.copy2(source, target, follow_symlinks=False)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(directory, d))]


def _is_opaque(directory: str) -> bool:
    from pbuild.tools.launcher.extract import OPAQUE_XATTR

    try:
        return os.getxattr(directory, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False
