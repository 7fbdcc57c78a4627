"""//app:image is byte-for-byte reproducible across folders, umask, TZ, LANG, --jobs and cache state.

Editing program.py changes only the app layer.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace, layer_digests
from tests.support.runner import Runner, tree_digest

pytestmark = pytest.mark.slow

UMASK_077 = ("sh", "-c", 'umask 077 && exec "$@"', "sh")
UMASK_022 = ("sh", "-c", 'umask 022 && exec "$@"', "sh")


def _restrict(root: Path) -> None:
    """Make a clone look like one checked out under umask 077."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() or os.access(path, os.X_OK) else 0o600)


def test_two_clones_same_image(tmp_path: Path, pbuild: Runner) -> None:
    first = clone_app_workspace(tmp_path / "first" / "ws")
    second = clone_app_workspace(tmp_path / "somewhere else" / "clone-two")
    _restrict(second)
    cache_one, cache_two = tmp_path / "cache-one", tmp_path / "cache-two"
    env_one = {"TZ": "UTC", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env_two = {"TZ": "Pacific/Auckland", "LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8"}

    a = pbuild("build", "--jobs", "1", "//app:image", cwd=first, cache=cache_one, env=env_one, prefix=UMASK_022,
               timeout=900)
    assert a.code == 0, a
    b = pbuild("build", "--jobs", "2", "//app:image", cwd=second, cache=cache_two, env=env_two, prefix=UMASK_077,
               timeout=900)
    assert b.code == 0, b
    out_a, out_b = first / "pbuild-out/app/image", second / "pbuild-out/app/image"
    assert (out_a / "digest").read_bytes() == (out_b / "digest").read_bytes()
    assert tree_digest(out_a / "oci").keys() == tree_digest(out_b / "oci").keys()
    for name, (content, _) in tree_digest(out_a / "oci").items():
        assert tree_digest(out_b / "oci")[name][0] == content, name
    assert (out_a / "image.tar").read_bytes() == (out_b / "image.tar").read_bytes()
    # No build path, time zone or host name in the documents or in the uncompressed app layer.
    documents = [p.read_bytes() for p in (out_a / "oci/blobs/sha256").iterdir() if p.stat().st_size < 100_000 and p.read_bytes()[:1] == b"{"]
    documents.append(gzip.decompress(next((out_a / "layers").glob("app-*.tar.gz")).read_bytes()))
    for text in (str(first), str(second), "Auckland", "first/ws", os.uname().nodename):
        assert not any(text.encode() in doc for doc in documents), text

    # A warm cache (the first one) serving a third clone built with the second's settings.
    third = clone_app_workspace(tmp_path / "third")
    c = pbuild("build", "--jobs", "2", "//app:image", cwd=third, cache=cache_one, env=env_two, prefix=UMASK_077)
    assert c.code == 0, c
    assert (third / "pbuild-out/app/image/digest").read_bytes() == (out_a / "digest").read_bytes()

    # Editing program.py changes the app layer and nothing below it.
    before = layer_digests(out_b)
    program = second / "app/program.py"
    program.write_text(program.read_text() + "# an edit\n")
    d = pbuild("build", "//app:image", cwd=second, cache=cache_two, env=env_two, prefix=UMASK_077)
    assert d.code == 0, d
    after = layer_digests(out_b)
    assert len(before) == len(after) >= 3
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
