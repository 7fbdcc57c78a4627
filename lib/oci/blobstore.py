"""Stores of blobs by OCI digest, for pulled images: the protocol and a plain folder store.

The engine passes its own store (``pbuild.engine.store.OciBlobs``, the CAS under
``--cache-dir``); :class:`DirectoryBlobStore` serves callers without an engine. Kept apart from
the registry client so that the engine can use it without importing HTTP.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Protocol

from pbuild.lib import atomicio
from pbuild.lib.digest import OciDigest, oci_hex
from pbuild.lib.oci.errors import RegistryError

_READ_CHUNK = 1 << 20


#: Fills a blob: called with a sink that takes the blob's bytes in order.
Fill = Callable[[Callable[[bytes], None]], None]


class BlobStore(Protocol):
    """Where pulled blobs are kept, by OCI digest. Every blob it serves is checked when served."""

    def get(self, digest: OciDigest, size: int | None) -> str | None:
        """The path of a verified copy of ``digest`` (of ``size`` bytes, when given), or None.

        A damaged entry is dropped, never served.
        """

    def put(self, digest: OciDigest, size: int | None, fill: Fill) -> str:
        """Receive ``digest`` from ``fill`` (see :func:`receive`), keep it, return its path."""


def receive(path: str, digest: OciDigest, size: int | None, fill: Fill) -> None:
    """Write what ``fill`` sends into the new file ``path``, refused unless it is ``digest``."""
    hasher = hashlib.sha256()
    received = 0
    with open(path, "xb") as handle:
        def sink(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if size is not None and received > size:
                raise RegistryError(f"downloaded blob {digest} is larger than the {size} bytes its descriptor says",
                                    hint="the registry served damaged data; try again or check the registry")
            hasher.update(chunk)
            handle.write(chunk)

        fill(sink)
    got = "sha256:" + hasher.hexdigest()
    if got != digest or (size is not None and received != size):
        raise RegistryError(f"downloaded blob {digest} does not match: got {got} ({received} bytes"
                            f"{'' if size is None else f', expected {size}'})",
                            hint="the registry served damaged data; try again or check the registry")


def sha256_of_file(path: str) -> OciDigest:
    """The OCI digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
    return OciDigest("sha256:" + digest.hexdigest())


class DirectoryBlobStore:
    """Verified blobs in a folder of their own: ``<dir>/sha256/<hex>`` (mode 0444)."""

    def __init__(self, directory: str) -> None:
        self.dir = os.path.join(directory, "sha256")

    def path(self, digest: OciDigest) -> str:
        return os.path.join(self.dir, oci_hex(digest))

    def get(self, digest: OciDigest, size: int | None) -> str | None:
        path = self.path(digest)
        try:
            actual = sha256_of_file(path)
        except FileNotFoundError:
            return None
        if actual == digest and (size is None or os.path.getsize(path) == size):
            return path
        os.unlink(path)  # damaged: drop it and fetch again
        return None

    def put(self, digest: OciDigest, size: int | None, fill: Fill) -> str:
        os.makedirs(self.dir, exist_ok=True)
        dest = self.path(digest)
        with atomicio.temp_beside(dest) as tmp:
            receive(tmp, digest, size, fill)
            os.chmod(tmp, 0o444)
            atomicio.publish_file(tmp, dest)
        return dest
