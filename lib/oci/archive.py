"""Image archives: write one image as a docker-archive or an OCI archive, and read either back.

Writing is deterministic (members sorted, owner 0:0, mtime 0, the headers of
:mod:`pbuild.lib.determinism`) and atomic (a temp file renamed onto the destination). The
docker-archive written is also an OCI layout (``oci-layout``, ``index.json``, ``blobs/``) with
Docker's ``manifest.json`` beside it, as Docker 25 writes them, so ``docker load``, ``podman
load`` and ``skopeo ... docker-archive:`` read it and so do OCI tools.

Reading treats the archive as hostile: only regular files and folders, no absolute names, no
``..``, no links or devices, no name twice, JSON documents capped at :data:`MAX_ARCHIVE_JSON`.
Members are written by this module (never ``tarfile.extractall``) into a fresh folder, so
nothing can land outside it. A docker-archive without an OCI layout inside (Docker before 25,
``podman save``) is turned into one: each layer's bytes are held to the config's ``diff_ids``.
The resulting layout is then read with :mod:`pbuild.lib.oci.layout`, which checks every digest
and size the manifest names; the image store checks the layers' digests before storing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from pbuild.lib import atomicio, determinism
from pbuild.lib.digest import OciDigest, oci_hex
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.lib.oci.errors import ImageArchiveError, InvalidReference
from pbuild.lib.oci.reference import Reference

#: The largest ``manifest.json``, ``index.json``, ``oci-layout`` or ``repositories`` accepted.
MAX_ARCHIVE_JSON = 4 * 1024 * 1024
#: The most members an archive may have (an image has a few per layer).
MAX_MEMBERS = 100_000
#: The annotation containerd and Docker 25 use for an image's full name in ``index.json``.
CONTAINERD_NAME = "io.containerd.image.name"

FORMATS = ("docker-archive", "oci-archive")
_JSON_MEMBERS = ("manifest.json", "index.json", "oci-layout", "repositories")
_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Writing


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + oci_hex(OciDigest(digest))


def write_archive(out_path: str, image: oci_layout.LayoutImage, names: Sequence[str], *,
                  archive_format: str = "docker-archive") -> None:
    """Write ``image`` (read from its layout) to ``out_path`` as ``archive_format`` named ``names``."""
    if archive_format not in FORMATS:
        raise ValueError(archive_format)
    config = oci_layout.descriptor(image.manifest.get("config"), "image config", image.layout,
                                   f"the image manifest {image.digest}")
    top = Descriptor(image.manifest_blob.descriptor.media_type or mediatypes.OCI_MANIFEST,
                     image.digest, image.manifest_blob.size)
    entries: list[dict[str, Any]] = []
    tags: list[str | None] = [*names] or [None]  # untagged: one entry without a name
    for name in tags:
        entry: dict[str, Any] = top.to_json()
        if name is not None:
            ref = Reference.parse(name)
            entry["annotations"] = {CONTAINERD_NAME: name, mediatypes.REF_NAME: ref.tag or "latest"}
        entries.append(entry)
    documents: dict[str, bytes] = {
        "oci-layout": oci_layout.layout_marker(),
        "index.json": determinism.canonical_json(
            {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries}),
    }
    if archive_format == "docker-archive":
        documents["manifest.json"] = determinism.canonical_json([{
            "Config": _blob_name(config.digest),
            "RepoTags": list(names),
            "Layers": [_blob_name(layer.blob.digest) for layer in image.layers],
        }])
    files = {_blob_name(image.digest): image.manifest_blob.path(), _blob_name(config.digest): config.path()}
    files.update({_blob_name(layer.blob.digest): layer.path for layer in image.layers})
    with atomicio.writing(os.path.abspath(out_path), mode=0o644) as handle:
        write_tar(handle, documents, files, dirs=("blobs", "blobs/sha256"))


def write_tar(handle: BinaryIO, documents: Mapping[str, bytes], files: Mapping[str, str], *,
              dirs: Sequence[str] = (), mtime: int = 0) -> None:
    """A deterministic tar of ``documents`` (name -> bytes), ``files`` (name -> a file to copy)
    and ``dirs`` into ``handle``: members sorted by name, mode 0644/0755, owner 0:0, ``mtime``.
    Shared by ``pbuild save`` and the image rule's docker-archive."""
    written = 0
    for name in sorted({*documents, *files, *dirs}):
        if name in dirs:
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


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class LoadedArchive:
    """An archive unpacked and checked: an OCI layout of its one image and the names it carries."""

    layout: str
    names: tuple[str, ...]
    kind: str  # "docker-archive" or "oci-archive"


def _refuse(archive: str, problem: str, hint: str | None = None) -> ImageArchiveError:
    return ImageArchiveError(f"image archive {archive}: {problem}; nothing was loaded",
                        hint=hint or "load an archive written by `pbuild save`, `docker save`, `podman save` "
                                     "or `skopeo copy ... docker-archive:FILE`")


def _member_name(archive: str, member: tarfile.TarInfo) -> str:
    raw = member.name
    if "\0" in raw or raw.startswith("/"):
        raise _refuse(archive, f"member {raw!r} has an absolute name")
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    parts = name.split("/")
    if not name or name == "." or any(p in ("..",) for p in parts) or any(p == "" for p in parts):
        raise _refuse(archive, f"member {raw!r} leaves the archive's folder (a '..' or empty part)")
    return posixpath.normpath(name)


def unpack(archive: str, dest: str) -> LoadedArchive:
    """Unpack ``archive`` (plain, gzip or other compression tarfile reads) into the new folder
    ``dest`` and make an OCI layout of its image there; :class:`ImageArchiveError` if it is refused."""
    os.mkdir(dest, 0o700)
    root = os.path.join(dest, "files")
    os.mkdir(root, 0o700)
    seen: set[str] = set()
    aliases: dict[str, str] = {}  # symlink member -> the member it names
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ImageArchiveError(f"image archive {archive} does not exist", hint="check the path given to -i") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _refuse(archive, f"not a tar archive ({exc})") from None
    try:
        for count, member in enumerate(tar, 1):
            if count > MAX_MEMBERS:
                raise _refuse(archive, f"more than {MAX_MEMBERS} members")
            name = _member_name(archive, member)
            if name in seen:
                raise _refuse(archive, f"member {name!r} appears twice",
                              hint="an archive where a later member replaces an earlier one is refused")
            seen.add(name)
            if member.isdir():
                os.makedirs(os.path.join(root, name), mode=0o700, exist_ok=True)
                continue
            if member.issym():
                aliases[name] = _link_target(archive, name, member.linkname)
                continue
            if not member.isfile():
                kind = "a hard link" if member.islnk() else "a device or fifo"
                raise _refuse(archive, f"member {name!r} is {kind}; an image archive holds only files, folders "
                                       "and symlinks to its own files")
            if name in _JSON_MEMBERS and member.size > MAX_ARCHIVE_JSON:
                raise _refuse(archive, f"{name} is {member.size} bytes, more than the {MAX_ARCHIVE_JSON} allowed")
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            # O_NOFOLLOW | O_EXCL: no member is a link, and none is written twice.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _refuse(archive, f"the tar is damaged ({exc})") from None
    except (IsADirectoryError, NotADirectoryError, FileExistsError):
        raise _refuse(archive, "a member is both a file and a folder") from None
    finally:
        tar.close()
    _link_aliases(archive, root, aliases)
    docker_names = _docker_manifest(archive, root) if "manifest.json" in seen else None
    if "index.json" in seen and "oci-layout" in seen:
        names = docker_names[1] if docker_names is not None else _index_names(archive, root)
        return LoadedArchive(root, names, "docker-archive" if docker_names is not None else "oci-archive")
    if docker_names is None:
        raise _refuse(archive, "it holds neither manifest.json (a docker-archive) nor index.json and oci-layout "
                               "(an OCI archive)")
    layout = os.path.join(dest, "layout")
    _convert_docker(archive, root, docker_names[0], layout)
    return LoadedArchive(layout, docker_names[1], "docker-archive")


def _link_target(archive: str, name: str, target: str) -> str:
    """The member a symlink member names (Docker's and skopeo's ``<id>/layer.tar -> ../<hex>.tar``);
    refused unless it is relative and stays inside the archive."""
    if not target or target.startswith("/") or "\0" in target:
        raise _refuse(archive, f"member {name!r} is a symlink to {target!r}, outside the archive")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved.startswith("../") or resolved in ("..", "."):
        raise _refuse(archive, f"member {name!r} is a symlink to {target!r}, outside the archive")
    return resolved


def _link_aliases(archive: str, root: str, aliases: dict[str, str]) -> None:
    """Give each symlink member the bytes of the file it names, as a hard link to our own copy
    (no symlink is ever made on disk); a link to a link, a folder or nothing is refused."""
    for name, target in sorted(aliases.items()):
        source = os.path.join(root, target)
        if target in aliases or not os.path.isfile(source) or os.path.islink(source):
            raise _refuse(archive, f"member {name!r} is a symlink to {target!r}, which is not a file of the archive")
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.link(source, path)


def _read_json(archive: str, path: str, what: str, limit: int = MAX_ARCHIVE_JSON) -> Any:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _refuse(archive, f"{what} is more than {limit} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise _refuse(archive, f"{what} is not valid JSON ({exc})") from None


def _member_path(archive: str, root: str, name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise _refuse(archive, f"manifest.json names its {what} as {str(name)[:100]!r}, not a member of the archive")
    path = os.path.join(root, posixpath.normpath(name))
    if not os.path.isfile(path) or os.path.islink(path):
        raise _refuse(archive, f"the {what} {name!r} that manifest.json names is missing")
    return path


def _checked_names(archive: str, names: Any, what: str) -> tuple[str, ...]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _refuse(archive, f"{what} is not a list of names")
    result = []
    for name in names:
        try:
            result.append(str(Reference.parse(name)))
        except InvalidReference as exc:
            raise _refuse(archive, f"{what} has a bad image name: {exc.message}") from None
    return tuple(result)


def _docker_manifest(archive: str, root: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    doc = _read_json(archive, os.path.join(root, "manifest.json"), "manifest.json")
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise _refuse(archive, "manifest.json is not a list of images")
    if len(doc) > 1:
        raise _refuse(archive, f"manifest.json lists {len(doc)} images", hint="pbuild load takes an archive of one "
                      "image; save them one by one")
    return doc[0], _checked_names(archive, doc[0].get("RepoTags") or [], "manifest.json's RepoTags")


def _index_names(archive: str, root: str) -> tuple[str, ...]:
    """The full names ``index.json`` gives its image (containerd's annotation, or a ``ref.name``
    that is a whole reference; a bare tag such as ``1.0`` names no repository)."""
    oci_layout.read_index(root)  # the marker and the index's shape, checked
    index = _read_json(archive, os.path.join(root, "index.json"), "index.json")
    names = set()
    for doc in index.get("manifests") or []:
        annotations = doc.get("annotations") if isinstance(doc, dict) else None
        if not isinstance(annotations, dict):
            continue
        ref_name = annotations.get(mediatypes.REF_NAME)
        for candidate in (annotations.get(CONTAINERD_NAME),
                          ref_name if isinstance(ref_name, str) and ("/" in ref_name or ":" in ref_name) else None):
            if isinstance(candidate, str):
                try:
                    names.add(str(Reference.parse(candidate)))
                    break
                except InvalidReference:
                    continue
    return tuple(sorted(names))


def _hash_layer(path: str) -> tuple[str, str, str]:
    """The layer file's sha256, its uncompressed sha256 (its diff_id) and its media type."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    blob = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            blob.update(chunk)
    if not gzipped:
        return "sha256:" + blob.hexdigest(), "sha256:" + blob.hexdigest(), _LAYER_TAR
    raw = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            raw.update(chunk)
    return "sha256:" + blob.hexdigest(), "sha256:" + raw.hexdigest(), _LAYER_GZIP


def _convert_docker(archive: str, root: str, entry: dict[str, Any], layout: str) -> None:
    """Write an OCI layout of the docker-archive image ``entry`` (layers linked, not copied)."""
    config_path = _member_path(archive, root, entry.get("Config"), "image config")
    config = _read_json(archive, config_path, "the image config", oci_layout.MAX_DOCUMENT)
    if not isinstance(config, dict):
        raise _refuse(archive, "the image config is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    layer_names = entry.get("Layers")
    if not isinstance(layer_names, list) or not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
        raise _refuse(archive, f"manifest.json lists {len(layer_names) if isinstance(layer_names, list) else 'no'} "
                               f"layers but the config {len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids")
    with open(config_path, "rb") as handle:
        config_bytes = handle.read()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    stem = posixpath.basename(str(entry.get("Config"))).removesuffix(".json")
    if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) and stem != oci_hex(OciDigest(config_digest)):
        raise _refuse(archive, f"the image config {entry.get('Config')} has digest {config_digest}, not the one its "
                               "name says (the config blob does not match its digest)")
    files: dict[OciDigest, oci_layout.BlobFile] = {}
    layers = []
    for number, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True), 1):
        path = _member_path(archive, root, name, f"layer {number}")
        digest, raw_digest, media_type = _hash_layer(path)
        if raw_digest != diff_id:
            raise _refuse(archive, f"layer {number} ({name}) has diff_id {raw_digest}, but the config says {diff_id} "
                                   "(the layer does not match its digest)")
        files[OciDigest(digest)] = oci_layout.BlobFile(path)
        layers.append({"mediaType": media_type, "digest": digest, "size": os.path.getsize(path)})
    manifest = determinism.canonical_json({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layers,
    })
    manifest_digest = OciDigest("sha256:" + hashlib.sha256(manifest).hexdigest())
    oci_layout.write_layout(layout, Descriptor(mediatypes.OCI_MANIFEST, manifest_digest, len(manifest)),
                            documents={OciDigest(config_digest): config_bytes, manifest_digest: manifest}, files=files)
