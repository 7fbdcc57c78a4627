"""A fixture workspace of ``layer`` targets and a two-platform image, for the image index tests.

``layer`` is platform-independent, so the same layers serve linux/amd64 and linux/arm64: the image
index, its manifests, configs and SBOM artifacts are all real. The layer holds the host's
busybox-static, so ``pbuild run`` of the image runs on this machine (the host's platform).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.support.runner import write_tree

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
TAG = "pbuild.local/mp:1"

WORKSPACE = """\
[workspace]
name = "mp"

[platforms]
locks = ["linux/amd64", "linux/arm64"]
images = ["linux/amd64"]
"""

BUILD = f"""\
[tools]
rule = "layer"
srcs = ["busybox"]
prefix = "/bin"
modes = {{ "/bin/busybox" = "0755" }}
symlinks = {{ "/bin/sh" = "busybox", "/bin/uname" = "busybox" }}

[files]
rule = "layer"
srcs = ["hello.txt"]
prefix = "/srv"

[image]
rule = "image"
layers = [":tools", ":files"]
cmd = ["/bin/busybox", "uname", "-m"]
platforms = ["linux/amd64", "linux/arm64"]
repo_tags = ["{TAG}"]

[single]
rule = "image"
layers = [":tools", ":files"]
cmd = ["/bin/busybox", "uname", "-m"]
"""


def make_workspace(root: Path, *, build: str = BUILD, workspace: str = WORKSPACE) -> Path:
    """Write the fixture workspace at ``root``; returns it."""
    write_tree(root, {"WORKSPACE.toml": workspace, "pkg/BUILD.toml": build, "pkg/hello.txt": "hello\n"})
    shutil.copyfile(BUSYBOX, root / "pkg/busybox")
    return root


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes()


def document(layout: Path, digest: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(blob(layout, digest))
    return found
