"""OCI image layouts and docker-archives: read a base, assemble config and manifest, write both forms.

Every JSON document is canonical (``determinism.canonical_json``) so its digest is stable; the
docker-archive holds the very same blobs (it is also an OCI layout, as Docker 25 writes them)
plus the ``manifest.json`` that ``docker load`` and ``podman load`` read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbuild.engine.errors import PbuildError
from pbuild.lib import determinism
from pbuild.rules.oci.layerwriter import LayerDigests

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LayoutError(PbuildError):
    """A base that is not a valid OCI layout."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(layout: str, digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return os.path.join(layout, "blobs", algorithm, hexpart)


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


def _load_json(path: str, what: str, layout: str) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise LayoutError(f"{layout} is not a valid OCI layout: {what} is missing",
                          hint="a base must be an OCI image layout (oci-layout, index.json, blobs/sha256/...)") from None
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{layout} is not a valid OCI layout: {what} is not JSON ({exc})",
                          hint="a base must be an OCI image layout (oci-layout, index.json, blobs/sha256/...)") from None


def read_layout(layout: str, *, ref: str | None = None, linkable: bool = True) -> BaseImage:
    """Read the single image of an OCI layout (or the one whose ref name is ``ref``), checking digests."""
    problems: list[str] = []
    marker = _load_json(os.path.join(layout, "oci-layout"), "oci-layout", layout)
    if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
        problems.append("oci-layout has no imageLayoutVersion")
    index = _load_json(os.path.join(layout, "index.json"), "index.json", layout)
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        problems.append("index.json lists no manifests")
        manifests = []
    if ref is not None:
        manifests = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == ref]
    digests = {m.get("digest") for m in manifests if isinstance(m, dict)}
    if len(digests) > 1:
        problems.append(f"index.json names {len(digests)} different manifests; expected one image")
    if problems:
        raise LayoutError(f"{layout} is not a valid OCI layout: " + "; ".join(problems),
                          hint="build the base with pbuild, or export one with `skopeo copy ... oci:DIR`")
    manifest = _read_verified_json(layout, manifests[0], "manifest")
    if manifest.get("mediaType", MANIFEST_TYPE) not in (MANIFEST_TYPE, DOCKER_MANIFEST_TYPE):
        raise LayoutError(f"{layout}: the index points at a {manifest.get('mediaType')}, not an image manifest",
                          hint="multi-platform bases are not supported: copy one platform with skopeo --override-arch")
    config = _read_verified_json(layout, manifest.get("config", {}), "config")
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    layers_desc = manifest.get("layers", [])
    if len(diff_ids) != len(layers_desc):
        raise LayoutError(f"{layout}: the manifest has {len(layers_desc)} layers but the config {len(diff_ids)} diff_ids",
                          hint="the base image is damaged; export it again")
    layers = []
    history = [h for h in config.get("history", [])]
    real_history = [h for h in history if not h.get("empty_layer")]
    for i, (desc, diff_id) in enumerate(zip(layers_desc, diff_ids, strict=True)):
        path = blob_path(layout, desc["digest"])
        if not os.path.isfile(path) or os.path.getsize(path) != desc.get("size"):
            raise LayoutError(f"{layout}: layer blob {desc['digest']} is missing or has the wrong size",
                              hint="the base image is damaged; export it again")
        created_by = real_history[i].get("created_by", "") if i < len(real_history) else ""
        layers.append(BlobRef(LayerDigests(diff_id, desc["digest"], int(desc["size"]), desc["mediaType"]), path,
                              created_by, linkable))
    return BaseImage(tuple(layers), config.get("config", {}) or {}, tuple(history),
                     config.get("architecture", "amd64"), config.get("os", "linux"))


def _read_verified_json(layout: str, descriptor: Mapping[str, Any], what: str) -> Any:
    digest = descriptor.get("digest", "")
    path = blob_path(layout, digest) if ":" in digest else ""
    if not path or not os.path.isfile(path):
        raise LayoutError(f"{layout} is not a valid OCI layout: the {what} blob {digest or '(no digest)'} is missing",
                          hint="a base must be a complete OCI image layout")
    with open(path, "rb") as handle:
        data = handle.read()
    if sha256_digest(data) != digest:
        raise LayoutError(f"{layout}: the {what} blob does not match its digest {digest}",
                          hint="the base image is damaged; export it again")
    return json.loads(data)


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


def _place_blob(source: str, dest: str, linkable: bool) -> None:
    """Put ``source`` at ``dest``: a hard link when allowed and possible, else a copy."""
    if os.path.exists(dest):
        return
    if linkable:
        try:
            os.link(source, dest)
            return
        except OSError:
            pass
    shutil.copyfile(source, dest)
    os.chmod(dest, 0o644)


def write_layout(out_dir: str, image: WrittenImage, layers: Sequence[BlobRef], tags: Sequence[str]) -> None:
    """Write the OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) into ``out_dir``."""
    blobs = os.path.join(out_dir, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    for layer in layers:
        _place_blob(layer.path, blob_path(out_dir, layer.digests.digest), layer.linkable)
    for digest, data in ((image.config_digest, image.config), (image.manifest_digest, image.manifest)):
        with open(blob_path(out_dir, digest), "wb") as handle:
            handle.write(data)
    with open(os.path.join(out_dir, "oci-layout"), "wb") as handle:
        handle.write(determinism.canonical_json({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(out_dir, "index.json"), "wb") as handle:
        handle.write(index_json(image, tags))


def index_json(image: WrittenImage, tags: Sequence[str]) -> bytes:
    """``index.json`` with one descriptor per tag (``ref.name`` = the tag), or one untagged descriptor."""
    descriptor = {"mediaType": MANIFEST_TYPE, "digest": image.manifest_digest, "size": len(image.manifest)}
    manifests = [{**descriptor, "annotations": {REF_NAME: tag}} for tag in tags] or [descriptor]
    return determinism.canonical_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": manifests})


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
        "oci-layout": determinism.canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index_json(image, tags),
        blob_name(image.config_digest): image.config,
        blob_name(image.manifest_digest): image.manifest,
    }
    files = {blob_name(layer.digests.digest): layer.path for layer in layers}
    names = sorted({*documents, *files, "blobs", "blobs/sha256"})
    written = 0
    with open(out_path, "wb") as handle:
        for name in names:
            if name in ("blobs", "blobs/sha256"):
                header = determinism.tar_header(name + "/", kind=tarfile.DIRTYPE, mode=0o755, mtime=mtime)
                handle.write(header)
                written += len(header)
                continue
            data = documents.get(name)
            size = len(data) if data is not None else os.path.getsize(files[name])
            header = determinism.tar_header(name, kind=tarfile.REGTYPE, mode=0o644, size=size, mtime=mtime)
            handle.write(header)
            if data is not None:
                handle.write(data)
            else:
                handle.flush()
                _copy_into(files[name], handle.fileno(), size)
            padding = determinism.tar_padding(size)
            handle.write(padding)
            written += len(header) + size + len(padding)
        handle.write(determinism.tar_trailer(written))


def _copy_into(source: str, out_fd: int, size: int) -> None:
    """Append ``size`` bytes of ``source`` to ``out_fd`` in the kernel (no copy through Python)."""
    with open(source, "rb") as src:
        copied = 0
        while copied < size:
            sent = os.sendfile(out_fd, src.fileno(), copied, size - copied)
            if sent == 0:
                raise OSError(f"{source} shrank while it was being copied")
            copied += sent
