"""Copy the parts of this repository that //app:image needs into a fresh folder (a "clone")."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.paths import REPO

_PARTS = ("WORKSPACE.toml", ".pbuildignore", "app", "third_party")


def clone_app_workspace(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for part in _PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("pbuild-out", "__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / part)
    (dest / "BUILD.toml").write_text("")  # the root package of the repo builds pbuild itself; not needed here
    return dest


def layer_digests(out: Path) -> list[str]:
    """The layer digests of the built image's manifest, bottom to top."""
    import json

    layout = out / "oci"
    digest = (out / "digest").read_text().strip()
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]
