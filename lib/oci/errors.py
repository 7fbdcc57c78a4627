"""The errors of :mod:`pbuild.lib.oci`: user errors, reported by whichever front end called."""

from __future__ import annotations

from pbuild.lib.errors import UserError


class OciError(UserError):
    """Something about OCI data or a registry went wrong."""


class LayoutError(OciError):
    """An OCI image layout on disk that is missing, malformed, damaged or hostile (exit 2)."""


class AmbiguousLayout(LayoutError):
    """A layout holding several images where one is wanted; ``names`` are their ref names."""

    def __init__(self, message: str, *, names: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.names = names


class InvalidReference(OciError):
    """An image reference that cannot be parsed, or lacks the digest it needs (exit 2)."""


class RegistryError(OciError):
    """A push or pull that the registry refused or that could not reach it (exit 1)."""

    exit_code = 1


class ImageArchiveError(OciError):
    """An image archive (docker-archive, OCI archive) that is damaged or hostile (exit 2)."""
