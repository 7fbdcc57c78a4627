"""Image assembly: read a base, assemble config and manifest, write an OCI layout and a docker-archive.

Layouts are read and written by :mod:`pbuild.lib.oci.layout`; this module adds what the image
rules need on top: the base's layers as :class:`BlobRef`, config inheritance, the documents.

Every JSON document is canonical (``determinism.canonical_json``) so its digest is stable; the
docker-archive holds the very same blobs (it is also an OCI layout, as Docker 25 writes them)
plus the ``manifest.json`` that ``docker load`` and ``podman load`` read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbuild.lib import determinism
from pbuild.lib.digest import OciDigest, oci_digest_of
from pbuild.lib.oci import archive, mediatypes
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.rules.oci.layerwriter import LayerDigests

MANIFEST_TYPE = mediatypes.OCI_MANIFEST
INDEX_TYPE = mediatypes.OCI_INDEX
CONFIG_TYPE = mediatypes.OCI_CONFIG
REF_NAME = mediatypes.REF_NAME
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256_digest(data: bytes) -> str:
    return oci_digest_of(data)


@dataclass(frozen=True)
class BlobRef:
    """A layer of the image: its descriptor data and where its bytes are on disk."""

    digests: LayerDigests
    path: str
    created_by: str = ""
    # False for files the user owns (a base layout in the source tree): those are copied, never
    # hard-linked, so that the cache's read-only copies never share an inode with them.
    linkable: bool = True


@dataclass(frozen=True)
class BaseImage:
    """What an image inherits from its base: layers (with history) and the runtime config."""

    layers: tuple[BlobRef, ...]
    config: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...]
    architecture: str = "amd64"
    os: str = "linux"


def read_layout(layout: str, *, ref: str | None = None, linkable: bool = True,
                platform: str | None = None) -> BaseImage:
    """Read the single image of an OCI layout (or the one whose ref name is ``ref``), checking digests;
    of a layout whose top is an image index, ``platform``'s image.

    The layout is read by :func:`pbuild.lib.oci.layout.read_image`, the reader every caller shares.
    """
    image = oci_layout.read_image(layout, ref_name=ref, platform=platform)
    config = image.config
    history = [h for h in config.get("history", []) if isinstance(h, dict)]
    real_history = [h for h in history if not h.get("empty_layer")]
    layers = []
    for i, layer in enumerate(image.layers):
        created_by = real_history[i].get("created_by", "") if i < len(real_history) else ""
        desc = layer.blob.descriptor
        layers.append(BlobRef(LayerDigests(layer.diff_id, desc.digest, desc.size, desc.media_type), layer.path,
                              created_by, linkable))
    return BaseImage(tuple(layers), config.get("config", {}) or {}, tuple(history),
                     config.get("architecture", "amd64"), config.get("os", "linux"))


@dataclass(frozen=True)
class RunConfig:
    """The runtime part of an image config set by the image target (None = inherit from the base)."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()


def merge_config(base: Mapping[str, Any], run: RunConfig) -> dict[str, Any]:
    """The image's ``config`` section: the base's, overridden by the target's settings as Docker does."""
    out: dict[str, Any] = {k: v for k, v in base.items() if v not in (None, [], {}, "")}
    env_items: dict[str, str] = {}
    for item in base.get("Env") or []:
        key, _, value = item.partition("=")
        env_items[key] = value
    if "PATH" not in env_items:
        env_items["PATH"] = DEFAULT_PATH
    for key in sorted(run.env):
        env_items[key] = run.env[key]
    out["Env"] = [f"{k}={v}" for k, v in env_items.items()]
    if run.entrypoint is not None:
        out["Entrypoint"] = list(run.entrypoint)
        # As in a Dockerfile: a new ENTRYPOINT resets the inherited CMD.
        out.pop("Cmd", None)
    if run.cmd is not None:
        out["Cmd"] = list(run.cmd)
    if run.workdir:
        out["WorkingDir"] = run.workdir
    if run.user:
        out["User"] = run.user
    if run.labels:
        out["Labels"] = {**(base.get("Labels") or {}), **run.labels}
    if run.exposed_ports:
        ports = dict(base.get("ExposedPorts") or {})
        for port in run.exposed_ports:
            ports[port if "/" in port else f"{port}/tcp"] = {}
        out["ExposedPorts"] = ports
    return out


@dataclass(frozen=True)
class WrittenImage:
    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes


def build_image(
    *,
    base: BaseImage | None,
    layers: Sequence[BlobRef],
    run: RunConfig,
    epoch: int,
    annotations: Mapping[str, str],
    architecture: str = "amd64",
) -> tuple[WrittenImage, list[BlobRef]]:
    """Config and manifest documents for ``base`` plus ``layers``; returns them and the full layer list."""
    created = determinism.rfc3339(epoch)
    all_layers = list(base.layers if base else ()) + list(layers)
    history = [dict(h) for h in (base.history if base else ())]
    for layer in layers:
        history.append({"created": created, "created_by": layer.created_by or "pbuild layer"})
    config_section = merge_config(base.config if base else {}, run)
    config_doc = {
        "architecture": base.architecture if base else architecture,
        "os": base.os if base else "linux",
        "created": created,
        "config": config_section,
        "rootfs": {"type": "layers", "diff_ids": [layer.digests.diff_id for layer in all_layers]},
        "history": history,
    }
    config = determinism.canonical_json(config_doc)
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {"mediaType": layer.digests.media_type, "digest": layer.digests.digest, "size": layer.digests.size}
            for layer in all_layers
        ],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    manifest = determinism.canonical_json(manifest_doc)
    return WrittenImage(sha256_digest(manifest), manifest, sha256_digest(config), config), all_layers


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image of a (possibly multi-platform) image: ``platform`` is ``os/arch``."""

    platform: str
    image: WrittenImage
    layers: tuple[BlobRef, ...]


@dataclass(frozen=True)
class Artifact:
    """An OCI 1.1 artifact manifest (an SBOM) and the blobs it names."""

    manifest: bytes
    artifact_type: str
    blobs: Mapping[str, bytes]  # digest -> bytes (the empty config, the document)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(MANIFEST_TYPE, OciDigest(sha256_digest(self.manifest)), len(self.manifest),
                          artifact_type=self.artifact_type)


def artifact_manifest(document: bytes, media_type: str, subject: Descriptor) -> Artifact:
    """An OCI 1.1 artifact manifest holding ``document`` (one layer), about ``subject``.

    Its config is the empty descriptor (``application/vnd.oci.empty.v1+json``, the blob ``{}``),
    and ``artifactType`` is the document's media type, as the image spec's guidance for
    artifacts asks.
    """
    empty = mediatypes.EMPTY_BLOB
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": media_type,
        "config": {"mediaType": mediatypes.OCI_EMPTY, "digest": sha256_digest(empty), "size": len(empty)},
        "layers": [{"mediaType": media_type, "digest": sha256_digest(document), "size": len(document)}],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
    }
    return Artifact(determinism.canonical_json(doc), media_type,
                    {sha256_digest(empty): empty, sha256_digest(document): document})


def image_index(images: Sequence[PlatformImage]) -> bytes:
    """The OCI image index over ``images``, each manifest with its ``platform``, in the given order."""
    manifests = []
    for item in images:
        os_name, _, arch = item.platform.partition("/")
        manifests.append(Descriptor(MANIFEST_TYPE, OciDigest(item.image.manifest_digest), len(item.image.manifest),
                                    platform=(os_name, arch)).to_json())
    return determinism.canonical_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests})


def write_layout(out_dir: str, image: WrittenImage, layers: Sequence[BlobRef], tags: Sequence[str],
                 artifacts: Sequence[Artifact] = ()) -> None:
    """Write the OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) into ``out_dir``."""
    write_multi_layout(out_dir, [PlatformImage("", image, tuple(layers))], None, tags, artifacts)


def write_multi_layout(out_dir: str, images: Sequence[PlatformImage], index: bytes | None, tags: Sequence[str],
                       artifacts: Sequence[Artifact] = ()) -> None:
    """Write a layout whose ``index.json`` names ``index`` (an image index over ``images``) per tag,
    or, without one, the single image's manifest; then the artifacts, untagged."""
    documents: dict[OciDigest, bytes] = {}
    files: dict[OciDigest, oci_layout.BlobFile] = {}
    for item in images:
        documents[OciDigest(item.image.config_digest)] = item.image.config
        documents[OciDigest(item.image.manifest_digest)] = item.image.manifest
        for layer in item.layers:
            files[OciDigest(layer.digests.digest)] = oci_layout.BlobFile(layer.path, layer.linkable)
    for artifact in artifacts:
        documents[artifact.descriptor.digest] = artifact.manifest
        documents.update({OciDigest(d): data for d, data in artifact.blobs.items()})
    if index is not None:
        top = Descriptor(INDEX_TYPE, OciDigest(sha256_digest(index)), len(index))
        documents[top.digest] = index
    else:
        top = _manifest_descriptor(images[0].image)
    oci_layout.write_layout(out_dir, top, documents=documents, files=files, tags=tags,
                            artifacts=[a.descriptor for a in artifacts])


def manifest_descriptor(image: WrittenImage) -> Descriptor:
    """The descriptor of ``image``'s manifest (what an index or an artifact's subject names)."""
    return _manifest_descriptor(image)


def _manifest_descriptor(image: WrittenImage) -> Descriptor:
    return Descriptor(MANIFEST_TYPE, OciDigest(image.manifest_digest), len(image.manifest))


def index_json(image: WrittenImage, tags: Sequence[str]) -> bytes:
    """``index.json`` with one descriptor per tag (``ref.name`` = the tag), or one untagged descriptor."""
    return oci_layout.index_json([_manifest_descriptor(image)], tags)


def write_docker_archive(out_path: str, image: WrittenImage, layers: Sequence[BlobRef], tags: Sequence[str],
                         *, mtime: int = 0) -> None:
    """A tar that ``docker load`` and ``podman load`` accept, and that is an OCI layout as well."""

    def blob_name(digest: str) -> str:
        return "blobs/" + digest.replace(":", "/")

    manifest_json = [{
        "Config": blob_name(image.config_digest),
        "RepoTags": list(tags),
        "Layers": [blob_name(layer.digests.digest) for layer in layers],
    }]
    documents = {
        "manifest.json": determinism.canonical_json(manifest_json),
        "oci-layout": oci_layout.layout_marker(),
        "index.json": index_json(image, tags),
        blob_name(image.config_digest): image.config,
        blob_name(image.manifest_digest): image.manifest,
    }
    files = {blob_name(layer.digests.digest): layer.path for layer in layers}
    with open(out_path, "wb") as handle:
        archive.write_tar(handle, documents, files, dirs=("blobs", "blobs/sha256"), mtime=mtime)
