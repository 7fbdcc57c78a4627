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

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pbuild.lib.digest import OciDigest
from pbuild.lib.oci.blobstore import BlobStore
from pbuild.lib.oci.errors import OciError

#: Below the cache dir.
IMAGES_DIR = "images"


class ImageNotFound(OciError):
    """No image in the store has that name or ID (``pbuild run``/``rmi``/``save``/``tag``: exit 2,
    or 125 where ``pbuild run`` uses Docker's codes)."""


class ImageInUse(OciError):
    """``rmi`` of an image a container uses, without ``-f``."""


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


@dataclass(frozen=True)
class Removal:
    """What ``rmi``/prune did: names untagged and images deleted."""

    untagged: tuple[str, ...]
    deleted: tuple[OciDigest, ...]


class ImageStore:
    """The images under ``root``; blobs come from and go to ``blobs``."""

    def __init__(self, root: str, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs

    @classmethod
    def at(cls, cache_dir: str, blobs: BlobStore) -> ImageStore:
        """The store of the cache dir ``cache_dir``."""
        return cls(os.path.join(cache_dir, IMAGES_DIR), blobs)

    def images(self) -> list[StoredImage]:
        """Every image, newest first."""
        raise NotImplementedError("contract: helper store implements it")

    def resolve(self, name_or_id: str) -> StoredImage:
        """The image a full or short name (``app:1`` = ``docker.io/library/app:1``), a full
        digest, or an ID prefix of at least 4 hex digits names; :class:`ImageNotFound` (with the
        fix: `pbuild pull`, `pbuild images`) otherwise, and an ambiguous prefix is an error too."""
        raise NotImplementedError("contract: helper store implements it")

    def find(self, name_or_id: str) -> StoredImage | None:
        """:meth:`resolve`, or None when nothing matches (an ambiguous prefix still raises)."""
        raise NotImplementedError("contract: helper store implements it")

    def add_layout(self, layout: str, names: Sequence[str], source: str) -> StoredImage:
        """Store the one image of the OCI layout ``layout`` (every blob verified and put into
        the blob store) and point ``names`` at it; returns it. The layout is not changed."""
        raise NotImplementedError("contract: helper store implements it")

    def tag(self, name_or_id: str, name: str) -> StoredImage:
        """Point the full reference ``name`` at the image ``name_or_id`` names."""
        raise NotImplementedError("contract: helper store implements it")

    def remove(self, names_or_ids: Sequence[str], *, force: bool,
               users: Callable[[OciDigest], Sequence[str]]) -> Removal:
        """``rmi``: untag each name given; delete an image when it has no name left or was given
        by ID. ``users(digest)`` lists the containers using an image: without ``force``, a
        deletion it would affect is refused (:class:`ImageInUse`) and nothing is changed."""
        raise NotImplementedError("contract: helper store implements it")

    def referenced_blobs(self) -> set[OciDigest]:
        """Every blob some stored image needs (what a prune without ``-a`` keeps)."""
        raise NotImplementedError("contract: helper store implements it")
