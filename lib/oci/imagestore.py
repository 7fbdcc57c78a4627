"""The image store: pulled, loaded and tagged images, kept under the cache dir.

Contract of issue 13 (helper "store" implements it; others call it):

- Root ``<cache_dir>/images`` (:data:`IMAGES_DIR`). The bytes of every blob live once, in the
  blob store the caller passes (the engine's CAS through :class:`pbuild.engine.store.OciBlobs`);
  each stored image is also an OCI layout of its own (``StoredImage.layout``) whose blobs are
  hard links to those CAS files, so the launcher runs it as ``oci:LAYOUT`` and `pbuild system
  prune` frees a blob's bytes only when no image (and no ``pbuild-out`` file) links it any more.
- An image's ID is its manifest digest. Names are full references (``REGISTRY/REPO:TAG``, as
  :class:`pbuild.lib.oci.reference.Reference` prints them); one name points at one image, an
  image may have several names or none (dangling, after a re-pull or re-tag took its name).
- Changes happen under one lock file in the root and are published atomically: two ``pbuild
  pull`` at once, or a prune beside a pull, never leave a half-written image or a name pointing
  at nothing.
- Everything read back from disk is checked (names parsed, digests validated, layouts read with
  :mod:`pbuild.lib.oci.layout`), as any other input from outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pbuild.lib import atomicio, determinism, filelock
from pbuild.lib.digest import DigestError, OciDigest, oci_digest, oci_hex
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci.blobstore import BlobStore, sha256_of_file
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.lib.oci.errors import InvalidReference, LayoutError, OciError
from pbuild.lib.oci.reference import Reference

#: Below the cache dir.
IMAGES_DIR = "images"

_NAMES = "names.json"  # {full reference: manifest digest}
_LOCK = "lock"
_BY_DIGEST = "sha256"  # sha256/<hex>/{oci/, image.json}: one image each
_TMP = "tmp"  # images being assembled or removed: renamed in or out, never seen half-made
_META = "image.json"
_LAYOUT = "oci"
_MAX_META = 1 << 20
_HEX = re.compile(r"[0-9a-f]{4,64}")
_FIX = "`pbuild images` lists the stored images; `pbuild pull REF` or `pbuild load -i FILE` adds one"


class ImageNotFound(OciError):
    """No image in the store has that name or ID (``pbuild run``/``rmi``/``save``/``tag``: exit 2,
    or 125 where ``pbuild run`` uses Docker's codes)."""


class AmbiguousImage(OciError):
    """An ID prefix that several stored images share."""


class ImageInUse(OciError):
    """``rmi`` of an image a container uses, without ``-f``."""


class StoreDamaged(OciError):
    """A file of the image store that is not what the store writes (edited or damaged)."""


@dataclass(frozen=True)
class StoredImage:
    """One image in the store."""

    digest: OciDigest  # the manifest digest: the image's ID (``images`` shows its first 12 hex)
    names: tuple[str, ...]  # full references pointing at it, sorted; () when dangling
    size: int  # bytes of its blobs (manifest, config, layers) as stored (compressed)
    created: float  # when it entered the store (pull, load), seconds since the epoch
    source: str  # where it came from: "pull REF", "load FILE", ...
    layout: str  # its OCI layout directory (run it as ``oci:LAYOUT``)
    blobs: tuple[OciDigest, ...]  # every blob it needs, manifest first

    @property
    def short_id(self) -> str:
        """The first 12 hex digits of the ID, as ``docker images`` shows it."""
        return oci_hex(self.digest)[:12]


@dataclass(frozen=True)
class Removal:
    """What ``rmi``/prune did: names untagged and images deleted."""

    untagged: tuple[str, ...]
    deleted: tuple[OciDigest, ...]


def normalize_name(text: str) -> str:
    """The full reference a user's name means: registry and ``library/`` added as docker does,
    ``:latest`` when no tag or digest is given; :class:`InvalidReference` if it is none."""
    ref = Reference.parse(text)
    if ref.tag is None and ref.digest is None:
        ref = Reference(ref.registry, ref.repository, "latest")
    return str(ref)


class ImageStore:
    """The images under ``root``; blobs come from and go to ``blobs``."""

    def __init__(self, root: str, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs

    @classmethod
    def at(cls, cache_dir: str, blobs: BlobStore) -> ImageStore:
        """The store of the cache dir ``cache_dir``."""
        return cls(os.path.join(cache_dir, IMAGES_DIR), blobs)

    # -- reading ------------------------------------------------------------------------------

    def _image_dir(self, digest: OciDigest) -> str:
        return os.path.join(self.root, _BY_DIGEST, oci_hex(digest))

    def _read_names(self) -> dict[str, OciDigest]:
        path = os.path.join(self.root, _NAMES)
        try:
            with open(path, "rb") as handle:
                data = handle.read(_MAX_META + 1)
        except FileNotFoundError:
            return {}
        damaged = StoreDamaged(f"the image store's names file {path} is damaged",
                               hint="remove it (the images stay, without names) and tag them again")
        try:
            doc = json.loads(data) if len(data) <= _MAX_META else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise damaged
        names: dict[str, OciDigest] = {}
        for name, digest in doc.items():
            try:
                if not isinstance(name, str) or str(Reference.parse(name)) != name:
                    raise damaged
                names[name] = oci_digest(digest, where=f"{path}: {name}")
            except (InvalidReference, DigestError):
                raise damaged from None
        return names

    def _digests(self) -> list[OciDigest]:
        try:
            entries = os.listdir(os.path.join(self.root, _BY_DIGEST))
        except FileNotFoundError:
            return []
        return [OciDigest("sha256:" + e) for e in entries if re.fullmatch(r"[0-9a-f]{64}", e)]

    def _load(self, digest: OciDigest, names: dict[str, OciDigest]) -> StoredImage | None:
        """The image ``digest`` as stored, checked; None when it is gone (removed meanwhile)."""
        folder = self._image_dir(digest)
        meta_path = os.path.join(folder, _META)
        try:
            with open(meta_path, "rb") as handle:
                data = handle.read(_MAX_META + 1)
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(data) if len(data) <= _MAX_META else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or not isinstance(meta.get("created"), int | float) \
                or not isinstance(meta.get("source"), str):
            raise StoreDamaged(f"the image store's record {meta_path} is damaged",
                               hint=f"remove the image with `pbuild rmi -f {oci_hex(digest)[:12]}`")
        layout = os.path.join(folder, _LAYOUT)
        try:
            image = oci_layout.read_image(layout)
        except LayoutError as exc:
            if not os.path.isdir(folder):
                return None
            raise StoreDamaged(f"stored image {oci_hex(digest)[:12]}: {exc.message}",
                               hint=f"remove it with `pbuild rmi -f {oci_hex(digest)[:12]}` and pull or load "
                                    "it again") from None
        if image.digest != digest:
            raise StoreDamaged(f"stored image {oci_hex(digest)[:12]} holds the manifest {image.digest}",
                               hint=f"remove it with `pbuild rmi -f {oci_hex(digest)[:12]}`")
        config = image.manifest.get("config") or {}
        blobs = (image.digest, OciDigest(config["digest"]), *(layer.blob.digest for layer in image.layers))
        size = image.manifest_blob.size + int(config["size"]) + sum(layer.blob.size for layer in image.layers)
        return StoredImage(digest, tuple(sorted(n for n, d in names.items() if d == digest)), size,
                           float(meta["created"]), meta["source"], layout, blobs)

    def images(self) -> list[StoredImage]:
        """Every image, newest first."""
        names = self._read_names()
        found = (self._load(d, names) for d in self._digests())
        return sorted((i for i in found if i is not None), key=lambda i: (-i.created, i.digest))

    def _lookup(self, name_or_id: str, names: dict[str, OciDigest]) -> OciDigest | None:
        text = name_or_id.strip()
        with contextlib.suppress(DigestError):
            digest = oci_digest(text)
            return digest if os.path.isdir(self._image_dir(digest)) else None
        with contextlib.suppress(InvalidReference):
            ref = Reference.parse(text)
            if ref.tag is None and ref.digest is not None:  # REPO@sha256:...: that image, if stored
                named = names.get(str(ref))
                if named is not None or os.path.isdir(self._image_dir(ref.digest)):
                    return ref.digest
            full = normalize_name(text)
            if full in names:
                return names[full]
        if _HEX.fullmatch(text):
            matches = sorted(d for d in self._digests() if oci_hex(d).startswith(text))
            if len(matches) > 1:
                raise AmbiguousImage(f"the image ID prefix {text!r} matches {len(matches)} images "
                                     f"({', '.join(oci_hex(d)[:12] for d in matches[:5])})",
                                     hint="give more digits of the ID (`pbuild images --no-trunc` "
                                          "shows them whole)")
            return matches[0] if matches else None
        return None

    def resolve(self, name_or_id: str) -> StoredImage:
        """The image a full or short name (``app:1`` = ``docker.io/library/app:1``), a full
        digest, or an ID prefix of at least 4 hex digits names; :class:`ImageNotFound` (with the
        fix: `pbuild pull`, `pbuild images`) otherwise, and an ambiguous prefix is an error too."""
        found = self.find(name_or_id)
        if found is None:
            raise ImageNotFound(f"no image {name_or_id!r} in the image store ({self.root})", hint=_FIX)
        return found

    def find(self, name_or_id: str) -> StoredImage | None:
        """:meth:`resolve`, or None when nothing matches (an ambiguous prefix still raises)."""
        names = self._read_names()
        digest = self._lookup(name_or_id, names)
        return None if digest is None else self._load(digest, names)

    def referenced_blobs(self) -> set[OciDigest]:
        """Every blob some stored image needs (what a prune without ``-a`` keeps)."""
        return {blob for image in self.images() for blob in image.blobs}

    # -- changing -----------------------------------------------------------------------------

    def _ensure_root(self) -> None:
        """The root and its temp folder, private (0700): what is pulled may be private too."""
        for path in (self.root, os.path.join(self.root, _TMP)):
            try:
                os.makedirs(path, mode=0o700)
            except FileExistsError:
                continue
            os.chmod(path, 0o700)  # makedirs' mode is masked by the umask

    @contextlib.contextmanager
    def scratch(self) -> Iterator[str]:
        """A fresh folder inside the store (its filesystem, so files link into the CAS), removed
        afterwards: where a pull or a load assembles its layout before :meth:`add_layout`."""
        self._ensure_root()
        path = tempfile.mkdtemp(dir=os.path.join(self.root, _TMP), prefix="work-")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (one writer at a time; a prune holds it to keep pulls out)."""
        self._ensure_root()
        with filelock.acquire(os.path.join(self.root, _LOCK), exclusive=True):
            yield

    def _write_names(self, names: dict[str, OciDigest]) -> None:
        atomicio.write_bytes(os.path.join(self.root, _NAMES), determinism.canonical_json(names), mode=0o600)

    def _tmp_dir(self) -> str:
        self._ensure_root()
        return atomicio.temp_name(os.path.join(self.root, _TMP, "image"))

    def add_layout(self, layout: str, names: Sequence[str], source: str, *,
                   from_blob_store: bool = False) -> StoredImage:
        """Store the one image of the OCI layout ``layout`` (every blob verified and put into
        the blob store) and point ``names`` at it; returns it. The layout is not changed.

        ``from_blob_store``: the caller has just written ``layout`` from this store's blob store
        (a pull: every blob verified on the way in, the layout's files hard links to the blob
        store's), so its layer blobs are linked as they are instead of hashed once more.
        """
        full_names = [normalize_name(n) for n in names]
        # Manifest and config checked by digest, layers by size; of a multi-platform layout (an image
        # index) the store keeps this machine's platform, the one `pbuild run` would pick.
        image = oci_layout.read_image(layout, platform=_host_platform())
        config = oci_layout.descriptor(image.manifest.get("config"), "image config", layout,
                                       f"the image manifest {image.digest}")
        blobs = [image.manifest_blob, config, *(layer.blob for layer in image.layers)]
        # Every blob is checked before anything is stored: a damaged layout stores nothing.
        cas: dict[OciDigest, str | None] = {}
        for blob in blobs:
            if blob.digest in cas:
                continue
            if from_blob_store and os.stat(blob.path()).st_nlink > 1:  # linked from the blob store
                cas[blob.digest] = blob.path()
                continue
            cas[blob.digest] = self.blobs.get(blob.digest, blob.size)
            if cas[blob.digest] is None:
                given = blob.path()
                if sha256_of_file(given) != blob.digest or os.path.getsize(given) != blob.size:
                    raise blob.mismatch("has other bytes")
        files: dict[OciDigest, oci_layout.BlobFile] = {}
        for blob in blobs:
            kept = cas[blob.digest]
            if kept is None:
                kept = cas[blob.digest] = self.blobs.put(blob.digest, blob.size, _file_filler(blob.path()))
            files[blob.digest] = oci_layout.BlobFile(kept)
        top = Descriptor(image.manifest_blob.descriptor.media_type
                         or str(image.manifest.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"),
                         image.digest, image.manifest_blob.size)
        with self.locked():
            folder = self._image_dir(image.digest)
            if not os.path.isdir(folder):
                tmp = self._tmp_dir()
                try:
                    os.mkdir(tmp, 0o700)
                    oci_layout.write_layout(os.path.join(tmp, _LAYOUT), top, files=files)
                    meta = {"created": time.time(), "source": source}
                    atomicio.write_bytes(os.path.join(tmp, _META), determinism.canonical_json(meta), mode=0o600)
                    os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)
                    atomicio.publish_dir(tmp, folder)  # under the lock: nobody else publishes it
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            all_names = self._read_names()
            if full_names:
                all_names.update(dict.fromkeys(full_names, image.digest))
                self._write_names(all_names)
            stored = self._load(image.digest, all_names)
        assert stored is not None
        return stored

    def tag(self, name_or_id: str, name: str) -> StoredImage:
        """Point the full reference ``name`` at the image ``name_or_id`` names."""
        full = normalize_name(name)
        if Reference.parse(full).digest is not None:
            raise InvalidReference(f"cannot tag an image as {name!r}: a tag name has no digest",
                                   hint="write REGISTRY/REPO:TAG")
        with self.locked():
            names = self._read_names()
            digest = self._lookup(name_or_id, names)
            if digest is None:
                raise ImageNotFound(f"no image {name_or_id!r} in the image store ({self.root})", hint=_FIX)
            names[full] = digest
            self._write_names(names)
            stored = self._load(digest, names)
        assert stored is not None
        return stored

    def remove(self, names_or_ids: Sequence[str], *, force: bool,
               users: Callable[[OciDigest], Sequence[str]]) -> Removal:
        """``rmi``: untag each name given; delete an image when it has no name left or was given
        by ID. ``users(digest)`` lists the containers using an image: without ``force``, a
        deletion it would affect is refused (:class:`ImageInUse`) and nothing is changed."""
        with self.locked():
            names = self._read_names()
            untag: list[str] = []
            by_id: set[OciDigest] = set()
            for given in names_or_ids:
                digest = self._lookup(given, names)
                if digest is None:
                    raise ImageNotFound(f"no image {given!r} in the image store ({self.root})", hint=_FIX)
                name = _as_name(given)
                if name is not None and names.get(name) == digest:
                    untag.append(name)
                else:
                    by_id.add(digest)
            left = {n: d for n, d in names.items() if n not in untag and d not in by_id}
            touched = {names[n] for n in untag} | by_id
            delete = sorted(d for d in touched if d in by_id or d not in left.values())
            if not force:
                for digest in delete:
                    using = users(digest)
                    if using:
                        raise ImageInUse(
                            f"image {oci_hex(digest)[:12]} is used by container(s) {', '.join(using)}",
                            hint="remove the containers first (`pbuild rm -f NAME`), or pass -f to remove "
                                 "the image anyway (the containers keep running)")
            untagged = tuple(sorted(n for n in names if n not in left))
            self._write_names(left)  # names first: no name ever points at a removed image
            for digest in delete:
                folder = self._image_dir(digest)
                if os.path.isdir(folder):
                    gone = self._tmp_dir()
                    os.rename(folder, gone)  # atomicio-exempt: out of sight first, then deleted
                    shutil.rmtree(gone, ignore_errors=True)
        return Removal(untagged, tuple(delete))


def _as_name(text: str) -> str | None:
    """The full reference ``text`` is as a name (not a digest or an ID), or None."""
    if text.startswith("sha256:"):
        return None
    try:
        return normalize_name(text)
    except InvalidReference:
        return None


def _file_filler(path: str) -> Callable[[Callable[[bytes], None]], None]:
    def fill(sink: Callable[[bytes], None]) -> None:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                sink(chunk)
    return fill


def describe(image: StoredImage) -> dict[str, Any]:
    """An image as ``pbuild images --format json`` prints it."""
    return {"id": image.digest, "names": list(image.names), "size": image.size, "created": image.created,
            "source": image.source, "layout": image.layout}


def _host_platform() -> str:
    """This machine's platform as OCI spells it (``linux/amd64``)."""
    from pbuild.lib.platforms import host_platform

    return str(host_platform())
