"""OCI descriptors: what a document promises of a blob (media type, digest, size)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pbuild.lib.digest import DigestError, OciDigest, oci_digest
from pbuild.lib.oci.errors import LayoutError, OciError


@dataclass(frozen=True)
class Descriptor:
    """A checked descriptor: a sha256 digest and a non-negative integer size."""

    media_type: str
    digest: OciDigest
    size: int
    #: ``artifactType`` of an artifact manifest (an SBOM); None for an image or an index.
    artifact_type: str | None = None
    #: ``(os, architecture)`` of an image index's entry; None elsewhere.
    platform: tuple[str, str] | None = None

    @classmethod
    def from_json(cls, doc: Any, where: str, *, error: type[OciError] = LayoutError) -> Descriptor:
        """Parse ``doc``; a malformed one raises ``error`` saying ``where`` it was found."""
        size = doc.get("size") if isinstance(doc, dict) else None
        media_type = doc.get("mediaType", "") if isinstance(doc, dict) else ""
        try:
            digest = oci_digest(doc.get("digest") if isinstance(doc, dict) else None)  # type: ignore[arg-type]
        except DigestError:
            digest = None
        if digest is None or not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                or not isinstance(media_type, str):
            raise error(f"{where}: not a valid sha256 descriptor: {json.dumps(doc, default=str)[:200]}")
        artifact_type = doc.get("artifactType")
        return cls(media_type, digest, size, artifact_type if isinstance(artifact_type, str) else None)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest or an index."""
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type is not None:
            doc["artifactType"] = self.artifact_type
        if self.platform is not None:
            doc["platform"] = {"os": self.platform[0], "architecture": self.platform[1]}
        return doc
