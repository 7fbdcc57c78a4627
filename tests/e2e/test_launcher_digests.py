"""Every blob of an image is checked against the descriptor that names it before it is used:
an edited config or manifest, a wrong size, a swapped layer blob are refused, naming the blob
and the layout, as skopeo refuses them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.launcher import launch
from tests.support.testimages import make_busybox_image


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PBUILD_LAYER_STORE": str(tmp_path / "layers"),
        "PBUILD_RUNTIME_DIR": str(tmp_path / "run"),
    }


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def documents(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]).read_bytes())
    return index, manifest, json.loads(blob(layout, manifest["config"]["digest"]).read_bytes())


def edit_config(layout: Path) -> str:
    """Give the image another entrypoint in place, the manifest untouched: a config blob whose
    bytes no longer match its digest."""
    _, manifest, config = documents(layout)
    config["config"]["Cmd"] = ["/bin/sh", "-c", "echo edited"]
    blob(layout, manifest["config"]["digest"]).write_text(json.dumps(config))
    return str(manifest["config"]["digest"])


def edit_manifest(layout: Path) -> str:
    index, manifest, _ = documents(layout)
    manifest["annotations"] = {"edited": "yes"}
    blob(layout, index["manifests"][0]["digest"]).write_text(json.dumps(manifest))
    return str(index["manifests"][0]["digest"])


def wrong_size(layout: Path) -> str:
    index, _, _ = documents(layout)
    index["manifests"][0]["size"] += 1
    (layout / "index.json").write_text(json.dumps(index))
    return str(index["manifests"][0]["digest"])


def swap_layer_blob(layout: Path) -> str:
    """The same layer content compressed otherwise: its diff_id still matches, its digest not."""
    _, manifest, _ = documents(layout)
    digest = manifest["layers"][-1]["digest"]
    path = blob(layout, digest)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345))
    return str(digest)


@pytest.mark.parametrize(
    ("damage", "what", "problem", "skopeo_refuses"),
    [
        (edit_config, "image config", "bytes, but the image manifest sha256:", True),
        (edit_manifest, "image manifest", "bytes, but index.json says", False),
        (wrong_size, "image manifest", "bytes, but index.json says", False),
        (swap_layer_blob, "layer 2", "bytes, but the image manifest sha256:", True),
    ],
)
def test_a_changed_blob_is_refused(
    tmp_path: Path,
    env: dict[str, str],
    damage: Callable[[Path], str],
    what: str,
    problem: str,
    skopeo_refuses: bool,
) -> None:
    layout = make_busybox_image(tmp_path / "img")
    assert launch(env, "run", "--rm", f"oci:{layout}").stdout == "hi\n"
    shutil.rmtree(env["PBUILD_LAYER_STORE"])  # the swapped layer must be read again
    digest = damage(layout)
    result = launch(env, "run", "--rm", f"oci:{layout}")
    assert result.returncode == 125, result.stdout
    message = result.stderr.replace("\n  hint:", " hint:")
    assert f"OCI layout {layout}: the {what} blob {digest} has " in message
    assert problem in message and "changed or damaged" in message
    assert "edited" not in result.stdout and "Traceback" not in result.stderr
    assert not list(Path(env["PBUILD_RUNTIME_DIR"]).glob("containers/*"))
    if skopeo_refuses and shutil.which("skopeo"):  # the reference tool refuses these too
        copy = subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"dir:{tmp_path / 'copy'}"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert copy.returncode != 0 and "match" in copy.stderr


def test_a_changed_docker_archive_config_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    layout = make_busybox_image(tmp_path / "img")
    archive = tmp_path / "image.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"docker-archive:{archive}:busybox:test"], check=True,
                   capture_output=True)  # fmt: skip
    assert launch(env, "run", "--rm", f"docker-archive:{archive}").stdout == "hi\n"
    edited = tmp_path / "edited.tar"
    with tarfile.open(archive) as source, tarfile.open(edited, "w") as target:
        config_name = json.load(source.extractfile("manifest.json"))[0]["Config"]  # type: ignore[arg-type]
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == config_name and data is not None:
                config = json.loads(data)
                config["config"]["Cmd"] = ["/bin/sh", "-c", "echo edited"]
                data = json.dumps(config).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    result = launch(env, "run", "--rm", f"docker-archive:{edited}")
    assert result.returncode == 125 and "edited" not in result.stdout
    named = config_name.rsplit("/", 1)[-1].removesuffix(".json")
    actual = hashlib.sha256(data_of(edited, config_name)).hexdigest()
    assert f"the image config {config_name} has digest sha256:{actual}, but its name says sha256:{named}" in (
        result.stderr
    )


def data_of(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()
