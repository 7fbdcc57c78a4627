"""OCI layout and docker-archive writing and reading, validated by the real skopeo and umoci."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from pbuild.lib.oci.errors import LayoutError
from pbuild.rules.oci import layout
from pbuild.rules.oci.layerwriter import LayerEntry, write_layer

needs_tools = pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo/umoci")


def _image(tmp_path: Path, *, base: layout.BaseImage | None = None, run: layout.RunConfig | None = None,
           content: bytes = b"hello\n", tags: tuple[str, ...] = ("t/app:1",)) -> tuple[Path, Path, layout.WrittenImage]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    blob = tmp_path / f"layer-{len(content)}.tar.gz"
    digests = write_layer([LayerEntry("srv/hello.txt", "file", 0o644, data=content)], str(blob))
    image, layers = layout.build_image(
        base=base, layers=[layout.BlobRef(digests, str(blob), "pbuild layer //t:hello")],
        run=run or layout.RunConfig(entrypoint=("/bin/cat",), cmd=("/srv/hello.txt",), env={"A": "1"},
                                    workdir="/srv", labels={"l": "v"}, exposed_ports=("8080",)),
        epoch=0, annotations={"org.example": "x"})
    out = tmp_path / f"oci-{len(content)}"
    layout.write_layout(str(out), image, layers, tags)
    tar = tmp_path / f"image-{len(content)}.tar"
    layout.write_docker_archive(str(tar), image, layers, tags)
    return out, tar, image


def test_documents(tmp_path: Path) -> None:
    out, tar, image = _image(tmp_path)
    config = json.loads(image.config)
    assert config["created"] == "1970-01-01T00:00:00Z"
    assert config["config"]["Entrypoint"] == ["/bin/cat"]
    assert config["config"]["Env"][0].startswith("PATH=") and "A=1" in config["config"]["Env"]
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert config["history"] == [{"created": "1970-01-01T00:00:00Z", "created_by": "pbuild layer //t:hello"}]
    assert image.config == json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest_digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "t/app:1"
    with tarfile.open(tar) as archive:
        names = archive.getnames()
        manifest_handle = archive.extractfile("manifest.json")
        assert manifest_handle is not None
        manifest = json.loads(manifest_handle.read())
    assert manifest[0]["RepoTags"] == ["t/app:1"]
    assert manifest[0]["Config"] in names and all(layer in names for layer in manifest[0]["Layers"])


def test_base_roundtrip_and_config_inheritance(tmp_path: Path) -> None:
    base_dir, _, base_image = _image(tmp_path)
    base = layout.read_layout(str(base_dir))
    assert len(base.layers) == 1 and base.config["Entrypoint"] == ["/bin/cat"]
    child, _, image = _image(tmp_path, base=base, run=layout.RunConfig(env={"B": "2"}), content=b"child\n")
    config = json.loads(image.config)
    assert len(config["rootfs"]["diff_ids"]) == 2
    assert config["config"]["Entrypoint"] == ["/bin/cat"] and config["config"]["Cmd"] == ["/srv/hello.txt"]
    assert "A=1" in config["config"]["Env"] and "B=2" in config["config"]["Env"]
    assert len(config["history"]) == 2
    # A new entrypoint drops the inherited cmd, as in a Dockerfile.
    _, _, again = _image(tmp_path / "x", base=base, run=layout.RunConfig(entrypoint=("/bin/true",)), content=b"e")
    assert "Cmd" not in json.loads(again.config)["config"]
    assert base_image.manifest_digest != image.manifest_digest


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "index.json").unlink(), "index.json is missing"),
        (lambda d: (d / "oci-layout").write_text("{"), "oci-layout is not JSON"),
        (lambda d: (d / "index.json").write_text('{"manifests": []}'), "lists no manifests"),
        (lambda d: [p.unlink() for p in (d / "blobs/sha256").iterdir() if p.read_bytes()[:2] == b"\x1f\x8b"],
         "layer blob .* is missing"),
        (lambda d: [p.write_text("{}") for p in (d / "blobs/sha256").iterdir() if b'"config"' in p.read_bytes()],
         "manifest blob does not match its digest"),
    ],
)
def test_invalid_layouts(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = _image(tmp_path, content=b"x" * 5000)
    damage(out)
    with pytest.raises(LayoutError, match=message) as info:
        layout.read_layout(str(out))
    assert "not a valid OCI layout" in info.value.message or "damaged" in (info.value.hint or "")


def test_not_a_layout_at_all(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("hi")
    with pytest.raises(LayoutError, match="not a valid OCI layout: oci-layout is missing"):
        layout.read_layout(str(tmp_path))


@needs_tools
def test_skopeo_and_umoci_accept(tmp_path: Path) -> None:
    out, tar, image = _image(tmp_path)
    inspect = subprocess.run(["skopeo", "inspect", f"oci:{out}"], capture_output=True, text=True, check=True)
    assert json.loads(inspect.stdout)["Digest"] == image.manifest_digest
    archive = subprocess.run(["skopeo", "inspect", f"docker-archive:{tar}"], capture_output=True, text=True, check=True)
    assert json.loads(archive.stdout)["Layers"]
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{out}:t/app:1", str(bundle)],
                   capture_output=True, text=True, check=True)
    assert (bundle / "rootfs/srv/hello.txt").read_text() == "hello\n"
