"""The digest types that flow between stages, one per format, checked by mypy and free at run time.

pbuild handles three digest formats; a bare ``str`` let one stand in for another. ``NewType``
keeps them apart for the type checker without a wrapper object on the no-op path (the engine
makes one per input file per build):

- ``ContentDigest``: xxh3-128 hex, 32 characters: the engine's CAS and action keys.
- ``OciDigest``: ``sha256:`` + 64 hex: OCI descriptors, blobs, diff_ids, image ids.
- ``Sha256Hex``: 64 hex, no prefix: lock files and Debian/PyPI pins.
"""

from __future__ import annotations

import hashlib
import re
from typing import NewType

from pbuild.lib.errors import UserError

ContentDigest = NewType("ContentDigest", str)
OciDigest = NewType("OciDigest", str)
Sha256Hex = NewType("Sha256Hex", str)

_OCI = re.compile(r"sha256:[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT = re.compile(r"[0-9a-f]{32}")


class DigestError(UserError):
    """A digest is not in the format its place requires."""


def oci_digest(text: str, *, where: str = "digest") -> OciDigest:
    """``text`` checked as ``sha256:<64 lowercase hex>`` (the only algorithm pbuild accepts)."""
    if not isinstance(text, str) or _OCI.fullmatch(text) is None:
        raise DigestError(f"{where}: {str(text)[:80]!r} is not a sha256 digest (sha256:<64 hex>)")
    return OciDigest(text)


def sha256_hex(text: str, *, where: str = "sha256") -> Sha256Hex:
    """``text`` checked as 64 lowercase hex characters."""
    if not isinstance(text, str) or _SHA256.fullmatch(text) is None:
        raise DigestError(f"{where}: {str(text)[:80]!r} is not a sha256 hex digest (64 hex characters)")
    return Sha256Hex(text)


def content_digest(text: str, *, where: str = "digest") -> ContentDigest:
    """``text`` checked as an xxh3-128 hex digest (32 lowercase hex characters)."""
    if not isinstance(text, str) or _CONTENT.fullmatch(text) is None:
        raise DigestError(f"{where}: {str(text)[:80]!r} is not a content digest (32 hex characters)")
    return ContentDigest(text)


def oci_digest_of(data: bytes) -> OciDigest:
    """The OCI digest of ``data``."""
    return OciDigest("sha256:" + hashlib.sha256(data).hexdigest())


def oci_hex(digest: OciDigest) -> Sha256Hex:
    """The hex part of an OCI digest (its blob file name in a layout)."""
    return Sha256Hex(digest.removeprefix("sha256:"))
