"""Image references: ``REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]``, parsed as docker and podman do."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbuild.lib.digest import OciDigest
from pbuild.lib.oci.errors import InvalidReference

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Reference:
    """``REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: OciDigest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a reference; a missing registry means Docker Hub, as docker and podman do."""
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.fullmatch(digest):
                raise InvalidReference(f"image reference {text!r}: {digest!r} is not a sha256 digest",
                                       hint="write REGISTRY/REPO@sha256:<64 hex digits>")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1:]
            if not _TAG.fullmatch(tag):
                raise InvalidReference(f"image reference {text!r}: bad tag {tag!r}",
                                       hint="a tag is up to 128 letters, digits, '_', '.' or '-'")
        first, _, remainder = rest.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, rest if "/" in rest else f"library/{rest}"
        if not _REPO.fullmatch(repository):
            raise InvalidReference(f"image reference {text!r}: bad repository name {repository!r}",
                                   hint="repository names are lowercase letters, digits and separators . _ - /")
        return cls(registry, repository, tag, OciDigest(digest) if digest else None)

    @classmethod
    def parse_pinned(cls, text: str) -> Reference:
        """Parse a reference that must name its image by digest (a pull)."""
        ref = cls.parse(text)
        if not ref.digest:
            raise InvalidReference(f"image reference {text!r} is not pinned by digest",
                                   hint="write it as REGISTRY/REPO@sha256:... (`skopeo inspect docker://REF` shows "
                                        "the digest)")
        return ref

    @property
    def api_host(self) -> str:
        """The host that serves this registry's API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
