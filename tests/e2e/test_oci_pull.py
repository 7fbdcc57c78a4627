"""oci_pull: a registry base pinned by digest, pulled through the real CLI from Debian's
docker-registry, verified, cached, and usable offline afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pbuild.lib.oci.registry.push import push_layout

from tests.support.peers import docker_registry, make_oci_layout

pytestmark = pytest.mark.slow


def _pbuild(root: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pbuild.engine.cli", *args, "--cache-dir", str(cache)],
                          cwd=root, capture_output=True, text=True, timeout=300)


def _workspace(root: Path, reference: str) -> None:
    (root / "img").mkdir(parents=True)
    (root / "WORKSPACE.toml").write_text("[workspace]\n")
    (root / "img" / "hello.txt").write_text("hello from pbuild\n")
    (root / "img" / "BUILD.toml").write_text(
        f'[base]\nrule = "oci_pull"\nimage = "{reference}"\nplain_http = true\n\n'
        '[files]\nrule = "layer"\nsrcs = ["hello.txt"]\nprefix = "/srv"\n\n'
        '[app]\nrule = "image"\nbase = ":base"\nlayers = [":files"]\ncmd = ["/bin/cat", "/srv/hello.txt"]\n'
    )


def _layer_digests(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def test_pulled_base_is_verified_cached_and_works_offline(tmp_path: Path) -> None:
    source = make_oci_layout(tmp_path / "src", [{"etc/base-release": b"base 1\n"}])
    cache = tmp_path / "cache"
    root = tmp_path / "ws"
    with docker_registry(tmp_path / "registry") as registry:
        push_layout(str(source.path), f"{registry.host}/base:1", plain_http=True)
        reference = f"{registry.host}/base@{source.manifest_digest}"
        _workspace(root, reference)
        first = _pbuild(root, cache, "build", "//img:app")
        assert first.returncode == 0, first.stderr
    built = root / "pbuild-out" / "img" / "app" / "oci"
    layers = _layer_digests(built)
    assert layers[0] == source.layer_digests[0]  # the base's layer, as pulled
    assert len(layers) == 2
    digest = (root / "pbuild-out" / "img" / "app" / "digest").read_text()
    # The registry is gone: a clean rebuild comes from the cache, offline.
    assert _pbuild(root, cache, "clean").returncode == 0
    again = _pbuild(root, cache, "build", "//img:app")
    assert again.returncode == 0, again.stderr
    assert (root / "pbuild-out" / "img" / "app" / "digest").read_text() == digest
    assert os.path.isdir(root / "pbuild-out" / "img" / "base" / "oci")


def test_unpinned_reference_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    _workspace(root, "127.0.0.1:5000/base:latest")
    result = _pbuild(root, tmp_path / "cache", "build", "//img:app")
    assert result.returncode == 2
    assert "img/BUILD.toml:3" in result.stderr and "not pinned by digest" in result.stderr
    assert "sha256" in result.stderr and "Traceback" not in result.stderr


def test_missing_image_fails_the_build_with_the_registry_message(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    root = tmp_path / "ws"
    with docker_registry(tmp_path / "registry") as registry:
        _workspace(root, f"{registry.host}/nothing@sha256:{'0' * 64}")
        result = _pbuild(root, cache, "build", "//img:app")
    assert result.returncode == 1
    assert "//img:base" in result.stderr and "Traceback (most recent call last)" not in result.stderr
    assert not (root / "pbuild-out" / "img" / "base" / "oci").exists()
