"""The SBOM artifact and the image index documents, and layout readers skipping artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.errors import LayoutError
from pbuild.lib.oci.registry.push import referrers_tag
from pbuild.rules.oci import layout
from pbuild.rules.oci.layerwriter import LayerDigests


def _image(tmp_path: Path, arch: str) -> layout.PlatformImage:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(b"\0" * 1024)
    digest = layout.sha256_digest(blob.read_bytes())
    ref = layout.BlobRef(LayerDigests(digest, digest, 1024, "application/vnd.oci.image.layer.v1.tar"), str(blob))
    image, layers = layout.build_image(base=None, layers=[ref], run=layout.RunConfig(cmd=("/bin/true",)), epoch=0,
                                       annotations={}, architecture=arch)
    return layout.PlatformImage(f"linux/{arch}", image, tuple(layers))


def test_artifact_manifest_is_an_oci_1_1_artifact_about_its_subject(tmp_path: Path) -> None:
    image = _image(tmp_path, "arm64").image
    artifact = layout.artifact_manifest(b'{"spdxVersion":"SPDX-2.3"}', mediatypes.SPDX_JSON,
                                        layout.manifest_descriptor(image))
    doc = json.loads(artifact.manifest)
    assert doc["artifactType"] == mediatypes.SPDX_JSON and doc["mediaType"] == mediatypes.OCI_MANIFEST
    assert doc["config"] == {"mediaType": mediatypes.OCI_EMPTY, "digest": layout.sha256_digest(b"{}"), "size": 2}
    assert doc["subject"] == {"mediaType": mediatypes.OCI_MANIFEST, "digest": image.manifest_digest,
                              "size": len(image.manifest)}
    assert artifact.blobs[doc["layers"][0]["digest"]] == b'{"spdxVersion":"SPDX-2.3"}'
    assert artifact.descriptor.to_json()["artifactType"] == mediatypes.SPDX_JSON


def test_index_lists_platforms_in_order_and_readers_skip_artifacts(tmp_path: Path) -> None:
    images = [_image(tmp_path, "amd64"), _image(tmp_path, "arm64")]
    index = layout.image_index(images)
    assert [m["platform"] for m in json.loads(index)["manifests"]] == [
        {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64"}]
    artifacts = [layout.artifact_manifest(b"{}", mediatypes.SPDX_JSON, layout.manifest_descriptor(i.image))
                 for i in images]
    out = tmp_path / "oci"
    layout.write_multi_layout(str(out), images, index, ["app:1"], artifacts)
    assert [e.ref_name for e in oci_layout.read_index(str(out))] == ["app:1"]
    every = oci_layout.read_index(str(out), artifacts=True)
    assert [e.artifact_type for e in every] == [None, mediatypes.SPDX_JSON, mediatypes.SPDX_JSON]
    assert oci_layout.pick_image(str(out)).what == "image index"
    arm = oci_layout.read_image(str(out), platform="linux/arm64")
    assert arm.config["architecture"] == "arm64" and arm.digest == images[1].image.manifest_digest


def test_a_layout_of_artifacts_only_is_refused(tmp_path: Path) -> None:
    image = _image(tmp_path, "amd64").image
    artifact = layout.artifact_manifest(b"{}", mediatypes.SPDX_JSON, layout.manifest_descriptor(image))
    out = tmp_path / "oci"
    oci_layout.write_layout(str(out), artifact.descriptor, documents={artifact.descriptor.digest: artifact.manifest})
    with pytest.raises(LayoutError, match="lists only artifacts"):
        oci_layout.read_index(str(out))


def test_referrers_tag() -> None:
    assert referrers_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32
