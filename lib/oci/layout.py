"""OCI image layouts on disk (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``): read and write.

Reading treats a layout as hostile input, one way for every caller (the image rules reading a
base, ``pbuild push``, the launcher running ``oci:PATH``):

- every file read is resolved (symlinks followed) and must stay inside the layout;
- every digest must be ``sha256:<64 hex>`` before it becomes a path, so none can name ``../``;
- every blob is held to the descriptor that names it, from ``index.json`` down: its size always,
  its digest whenever its bytes are read here (manifests, configs; :func:`read_blob`), and
  layer blobs, which are large, by whoever streams them (:meth:`Blob.check`);
- JSON documents are read only up to :data:`MAX_DOCUMENT` bytes.

``index.json`` may also list artifacts (an SBOM's OCI 1.1 artifact manifest, untagged, carrying
``artifactType``) beside the images; :func:`read_index` leaves them out unless asked, so every
reader of images skips them in one place.

Writing puts the blobs first and ``index.json`` last, each file through
:mod:`pbuild.lib.atomicio`, and :func:`publish_layout` builds a whole layout beside its
destination and renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbuild.lib import atomicio, determinism
from pbuild.lib.digest import OciDigest, oci_hex
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.lib.oci.errors import AmbiguousLayout, LayoutError

#: The largest manifest, index or config read into memory (registries allow 4 MiB manifests).
MAX_DOCUMENT = 64 * 1024 * 1024

_LAYOUT_HINT = "an OCI image layout holds oci-layout, index.json and blobs/sha256/...; rebuild or export it again"
_DAMAGED_HINT = "the layout was changed or damaged after it was written; rebuild or copy it again"


def _invalid(layout: str, problem: str, hint: str = _LAYOUT_HINT) -> LayoutError:
    return LayoutError(f"{layout} is not a valid OCI layout: {problem}", hint=hint)


def _inside(layout: str, path: str, what: str) -> str:
    """``path`` with symlinks resolved, refused unless it stays inside ``layout``."""
    root = os.path.realpath(layout)
    real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        raise LayoutError(f"OCI layout {layout}: {what} resolves to {real}, outside the layout",
                          hint="a layout must hold its own files; copy it with skopeo or rebuild it")
    return real


def blob_path(layout: str, digest: OciDigest) -> str:
    """Where ``digest`` lives in ``layout`` (no check that it exists)."""
    return os.path.join(layout, "blobs", "sha256", oci_hex(digest))


@dataclass(frozen=True)
class Blob:
    """A blob of a layout together with who named it, for checks and messages."""

    layout: str
    descriptor: Descriptor
    what: str
    """What the blob is, e.g. "image config" or "layer 2"."""
    parent: str
    """Who named it, e.g. "index.json" or "the image manifest sha256:..."."""

    @property
    def digest(self) -> OciDigest:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    @property
    def _kind(self) -> str:
        return "layer" if self.what.startswith("layer ") else self.what

    def path(self) -> str:
        """The blob's real path, inside the layout, checked to be a regular file of the right size."""
        path = blob_path(self.layout, self.digest)
        if not os.path.lexists(path):
            raise _invalid(self.layout, f"the {self._kind} blob {self.digest} is missing")
        real = _inside(self.layout, path, f"the {self.what} blob {self.digest}")
        try:
            size = os.stat(real).st_size
        except OSError as exc:
            raise LayoutError(f"OCI layout {self.layout}: cannot read the {self.what} blob {self.digest}: "
                              f"{exc.strerror}") from None
        if not os.path.isfile(real):
            raise _invalid(self.layout, f"the {self.what} blob {self.digest} is not a file")
        if size != self.size:
            raise self.mismatch(f"has {size} bytes")
        return real

    def mismatch(self, problem: str) -> LayoutError:
        """The error for a blob that is not what its descriptor promised."""
        return LayoutError(
            f"OCI layout {self.layout}: the {self.what} blob {self.digest} {problem}, but {self.parent} says "
            f"{self.digest} of {self.size} bytes (the {self._kind} blob does not match its digest)",
            hint=_DAMAGED_HINT,
        )

    def check(self, sha256_hex: str, size: int) -> None:
        """Hold what a reader saw of the blob (its sha256 hex digest and size) to the descriptor."""
        if size != self.size:
            raise self.mismatch(f"has {size} bytes")
        if f"sha256:{sha256_hex}" != self.digest:
            raise self.mismatch(f"has digest sha256:{sha256_hex}")


def read_blob(blob: Blob) -> bytes:
    """The bytes of ``blob``, checked against its descriptor (size and digest)."""
    if blob.size > MAX_DOCUMENT:
        raise LayoutError(f"OCI layout {blob.layout}: the {blob.what} blob {blob.digest} is {blob.size} bytes, "
                          f"more than the {MAX_DOCUMENT} a document may have", hint=_DAMAGED_HINT)
    path = blob.path()
    try:
        with open(path, "rb") as handle:
            data = handle.read(blob.size + 1)
    except OSError as exc:
        raise LayoutError(f"OCI layout {blob.layout}: cannot read the {blob.what} blob {blob.digest}: "
                          f"{exc.strerror}") from None
    blob.check(hashlib.sha256(data).hexdigest(), len(data))
    return data


def read_document(blob: Blob) -> dict[str, Any]:
    """The JSON object ``blob`` holds, checked against its descriptor before it is parsed."""
    data = read_blob(blob)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise LayoutError(f"OCI layout {blob.layout}: the {blob.what} {blob.digest} is not valid JSON: {exc}",
                          hint=_DAMAGED_HINT) from None
    if not isinstance(document, dict):
        raise LayoutError(f"OCI layout {blob.layout}: the {blob.what} {blob.digest} is not a JSON object",
                          hint=_DAMAGED_HINT)
    return document


def _read_top(layout: str, name: str) -> Any:
    path = os.path.join(layout, name)
    if not os.path.lexists(path):
        raise _invalid(layout, f"{name} is missing")
    real = _inside(layout, path, name)
    try:
        with open(real, "rb") as handle:
            data = handle.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise _invalid(layout, f"{name} cannot be read ({exc.strerror})") from None
    if len(data) > MAX_DOCUMENT:
        raise _invalid(layout, f"{name} is larger than {MAX_DOCUMENT} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise _invalid(layout, f"{name} is not JSON ({exc})") from None


def descriptor(doc: Any, what: str, layout: str, parent: str) -> Blob:
    """The :class:`Blob` that ``doc`` (a descriptor found in ``parent``) names."""
    size = doc.get("size") if isinstance(doc, dict) else None
    digest = doc.get("digest") if isinstance(doc, dict) else None
    try:
        return Blob(layout, Descriptor.from_json(doc, parent), what, parent)
    except LayoutError:
        good_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        problem = "a malformed digest" if isinstance(digest, str) and good_size else \
            "no valid descriptor (digest and size)"
        raise LayoutError(f"OCI layout {layout}: {parent} has {problem} for its {what}"
                          f"{f' ({str(digest)[:80]!r})' if problem == 'a malformed digest' else ''}",
                          hint="the layout is malformed; rebuild it") from None


@dataclass(frozen=True)
class IndexEntry:
    """One entry of ``index.json``: the blob it names and its tag (``ref.name``), if any."""

    blob: Blob
    ref_name: str | None

    @property
    def artifact_type(self) -> str | None:
        """The ``artifactType`` of an artifact entry (an SBOM), None for an image or index."""
        return self.blob.descriptor.artifact_type


def read_index(layout: str, *, artifacts: bool = False) -> list[IndexEntry]:
    """The image entries of ``index.json`` (with ``artifacts``, the artifact entries as well),
    after checking the ``oci-layout`` marker; at least one image."""
    if not os.path.isdir(layout):
        raise LayoutError(f"OCI layout {layout} is not a directory",
                          hint="build the image first, or check the path (a layout holds oci-layout, "
                               "index.json and blobs/sha256/)")
    problems = []
    marker = _read_top(layout, "oci-layout")
    if not isinstance(marker, dict) or "imageLayoutVersion" not in marker:
        problems.append("oci-layout has no imageLayoutVersion")
    index = _read_top(layout, "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        problems.append("index.json lists no manifests")
        manifests = []
    if problems:
        raise _invalid(layout, "; ".join(problems),
                       hint="build it with pbuild, or export one with `skopeo copy ... oci:DIR`")
    entries = []
    for number, doc in enumerate(manifests, 1):
        annotations = doc.get("annotations") if isinstance(doc, dict) else None
        name = annotations.get(mediatypes.REF_NAME) if isinstance(annotations, dict) else None
        entries.append(IndexEntry(descriptor(doc, f"manifest {number}", layout, "index.json"),
                                  name if isinstance(name, str) else None))
    images = [e for e in entries if e.artifact_type is None]
    if not images:
        raise _invalid(layout, "index.json lists only artifacts, no image",
                       hint="build it with pbuild, or export one with `skopeo copy ... oci:DIR`")
    return entries if artifacts else images


def pick_image(layout: str, ref_name: str | None = None) -> Blob:
    """The one image of ``layout`` (several tags may name it), or the one tagged ``ref_name``."""
    entries = read_index(layout)
    if ref_name is not None:
        entries = [e for e in entries if e.ref_name == ref_name]
        if not entries:
            raise LayoutError(f"OCI layout {layout} has no image named {ref_name!r}",
                              hint="`pbuild images` or `skopeo inspect oci:DIR` lists the names")
    digests = {e.blob.digest: e for e in entries}
    if len(digests) > 1:
        names = sorted({e.ref_name or e.blob.digest for e in entries})
        raise AmbiguousLayout(f"OCI layout {layout} holds {len(digests)} images", names=names,
                              hint=f"name one of them ({names})")
    top = entries[0].blob
    what = "image index" if top.descriptor.media_type in mediatypes.INDEX_TYPES else "image manifest"
    return Blob(layout, top.descriptor, what, "index.json")


@dataclass(frozen=True)
class LayerBlob:
    """One layer of an image in a layout: its blob (size checked) and its uncompressed digest."""

    blob: Blob
    diff_id: str
    path: str


@dataclass(frozen=True)
class LayoutImage:
    """One image of a layout: its manifest, its config and its layers, each checked."""

    layout: str
    manifest_blob: Blob
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[LayerBlob, ...]

    @property
    def digest(self) -> OciDigest:
        """The manifest digest: the image's identity."""
        return self.manifest_blob.digest


def _platform_matches(doc: Any, os_name: str, arch: str) -> bool:
    platform = (doc.get("platform") if isinstance(doc, dict) else None) or {}
    return bool(platform.get("os", os_name) == os_name and platform.get("architecture", arch) == arch)


def read_image(layout: str, *, ref_name: str | None = None, platform: str | None = None) -> LayoutImage:
    """Read the one image of ``layout`` (or the one tagged ``ref_name``).

    ``platform`` (``os/arch``) picks from an image index; without it an index is refused.
    """
    top = pick_image(layout, ref_name)
    if top.what == "image index":
        if platform is None:
            raise LayoutError(f"OCI layout {layout}: index.json points at an image index, not an image manifest",
                              hint="multi-platform bases are not supported: copy one platform with "
                                   "skopeo --override-arch")
        nested = read_document(top)
        os_name, _, arch = platform.partition("/")
        for doc in nested.get("manifests") or []:
            if isinstance(doc, dict) and "artifactType" not in doc and _platform_matches(doc, os_name, arch):
                top = descriptor(doc, "image manifest", layout, f"the image index {top.digest}")
                break
        else:
            raise LayoutError(f"OCI layout {layout} has no image for {platform}")
    manifest = read_document(top)
    media_type = manifest.get("mediaType") or top.descriptor.media_type or mediatypes.OCI_MANIFEST
    if media_type not in mediatypes.MANIFEST_TYPES:
        raise LayoutError(f"OCI layout {layout}: {top.parent} points at a {media_type}, not an image manifest",
                          hint="a layout of one image is needed (skopeo copy ... oci:DIR)")
    parent = f"the image manifest {top.digest}"
    config = read_document(descriptor(manifest.get("config"), "image config", layout, parent))
    rootfs = config.get("rootfs")
    diff_ids = (rootfs.get("diff_ids") if isinstance(rootfs, dict) else None) or []
    layer_docs = manifest.get("layers") or []
    if not isinstance(diff_ids, list) or not isinstance(layer_docs, list) or len(diff_ids) != len(layer_docs):
        raise _invalid(layout, f"the manifest lists {len(layer_docs)} layers but the config "
                               f"{len(diff_ids)} diff_ids", hint=_DAMAGED_HINT)
    layers = []
    for number, (doc, diff_id) in enumerate(zip(layer_docs, diff_ids, strict=True), 1):
        blob = descriptor(doc, f"layer {number}", layout, parent)
        if not isinstance(diff_id, str):
            raise _invalid(layout, f"the config's diff_id {number} is not a string", hint=_DAMAGED_HINT)
        layers.append(LayerBlob(blob, diff_id, blob.path()))
    return LayoutImage(layout, top, manifest, config, tuple(layers))


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class BlobFile:
    """A blob's bytes in a file: hard-linked into a layout when ``linkable``, else copied.

    Files the user owns (a base layout in the source tree) are not linkable, so that the cache's
    read-only copies never share an inode with them.
    """

    path: str
    linkable: bool = True


def index_json(manifests: Iterable[Descriptor], tags: Sequence[str] = (),
               artifacts: Sequence[Descriptor] = ()) -> bytes:
    """``index.json``: per manifest, one entry per tag (``ref.name`` = the tag), or one untagged;
    then each artifact (``artifactType`` set), untagged."""
    entries: list[dict[str, Any]] = []
    for manifest in manifests:
        plain = manifest.to_json()
        entries += [{**plain, "annotations": {mediatypes.REF_NAME: tag}} for tag in tags] or [plain]
    entries += [artifact.to_json() for artifact in artifacts]
    return determinism.canonical_json({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries})


def layout_marker() -> bytes:
    """The bytes of the ``oci-layout`` file."""
    return determinism.canonical_json({"imageLayoutVersion": mediatypes.LAYOUT_VERSION})


def _place(source: BlobFile, dest: str) -> None:
    if os.path.exists(dest):
        return
    if source.linkable:
        try:
            os.link(source.path, dest)
            return
        except OSError:
            pass  # another filesystem, or a file we may not link: copy it
    with atomicio.temp_beside(dest) as tmp:
        shutil.copyfile(source.path, tmp)
        os.chmod(tmp, 0o644)
        atomicio.publish_file(tmp, dest)


def write_layout(out_dir: str, top: Descriptor, *, documents: Mapping[OciDigest, bytes] | None = None,
                 files: Mapping[OciDigest, BlobFile] | None = None, tags: Sequence[str] = (),
                 artifacts: Sequence[Descriptor] = ()) -> None:
    """Write an OCI layout of the image (or index) ``top`` into the folder ``out_dir``; ``artifacts``
    (manifests among ``documents``) are listed in ``index.json`` untagged after it.

    ``documents`` are blobs given as bytes (manifests, configs), ``files`` blobs already on disk
    (layers). ``index.json`` goes last, so a reader never sees an index naming a missing blob.
    """
    blobs = os.path.join(out_dir, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    for digest, source in sorted((files or {}).items()):
        _place(source, blob_path(out_dir, digest))
    for digest, data in sorted((documents or {}).items()):
        atomicio.write_bytes(blob_path(out_dir, digest), data)
    atomicio.write_bytes(os.path.join(out_dir, "oci-layout"), layout_marker())
    atomicio.write_bytes(os.path.join(out_dir, "index.json"), index_json([top], tags, artifacts))


def publish_layout(dest: str, top: Descriptor, *, documents: Mapping[OciDigest, bytes] | None = None,
                   files: Mapping[OciDigest, BlobFile] | None = None, tags: Sequence[str] = ()) -> None:
    """Write a whole layout beside ``dest`` and rename it into place (replacing what was there)."""
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = atomicio.temp_name(os.path.abspath(dest))
    try:
        write_layout(tmp, top, documents=documents, files=files, tags=tags)
        old = atomicio.replace_dir(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # our own folders: plain rmtree suffices
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
