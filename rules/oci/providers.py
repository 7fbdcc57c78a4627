"""Providers of the image rule family (``layer``, ``deb_packages``, ``image``)."""

from __future__ import annotations

from dataclasses import dataclass

from pbuild.engine.api import File, Provider, Toolchain


@dataclass(frozen=True, order=True)
class Layer:
    """One written layer: the blob, its sidecar JSON (diff_id, digest, size, media type) and a history line."""

    blob: File
    meta: File
    created_by: str


@dataclass(frozen=True)
class LayerInfo(Provider):
    """Layers a target contributes to an image, bottom to top.

    ``layers`` are the primary platform's. ``platform_layers`` holds every platform's layers for a
    target whose bytes differ by platform (``deb_packages``: one entry per platform the lock covers);
    empty for a platform-independent one (``layer``), whose ``layers`` serve every platform.
    """

    layers: tuple[Layer, ...]
    platform_layers: tuple[tuple[str, tuple[Layer, ...]], ...] = ()

    def for_platform(self, platform: str) -> tuple[Layer, ...] | None:
        """The layers for ``platform`` (OCI spelling), or None when the target has none for it."""
        return layers_for_platform(self.layers, self.platform_layers, platform)


def layers_for_platform(layers: tuple[Layer, ...], platform_layers: tuple[tuple[str, tuple[Layer, ...]], ...],
                        platform: str) -> tuple[Layer, ...] | None:
    """``platform``'s entry of ``platform_layers``; ``layers`` when that is empty (platform-independent)."""
    if not platform_layers:
        return layers
    for name, found in platform_layers:
        if name == platform:
            return found
    return None


@dataclass(frozen=True)
class PythonRuntimeInfo(Provider):
    """The Python interpreter a layer set provides (``deb_packages`` with a python3.X package)."""

    interpreter: str  # absolute in-image path, e.g. /usr/bin/python3.11
    version: str  # "3.11"
    site_packages: str  # where wheels go, e.g. /usr/local/lib/python3.11/dist-packages
    # The tree this interpreter runs on (deb_packages: its own layer), on which the image's
    # bytecode is compiled; None when pbuild did not build it (``interpreter =``, a pulled base).
    toolchain: Toolchain | None = None


@dataclass(frozen=True)
class ImageInfo(Provider):
    """A built image: ``layout`` is the OCI layout directory, ``tarball`` the docker-archive.

    ``digest`` holds one line, the manifest digest (of a multi-platform image: the image index's).
    ``runtime`` is carried over from the base so images stacked on images still know their
    interpreter. ``platforms`` are the platforms the image was built for, in order;
    ``platform_layers`` each one's layers as in :class:`LayerInfo` (``layers``: the primary's).
    ``sbom`` is the SPDX document beside the layout (the primary platform's).
    """

    layout: File
    digest: File
    tarball: File | None  # None for a pulled base (oci_pull)
    tags: tuple[str, ...]
    layers: tuple[Layer, ...] = ()
    runtime: PythonRuntimeInfo | None = None
    platforms: tuple[str, ...] = ()
    platform_layers: tuple[tuple[str, tuple[Layer, ...]], ...] = ()
    sbom: File | None = None

    def for_platform(self, platform: str) -> tuple[Layer, ...] | None:
        """The image's layers for ``platform``, or None when it was not built for it."""
        return layers_for_platform(self.layers, self.platform_layers, platform)
