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
    """Layers a target contributes to an image, bottom to top."""

    layers: tuple[Layer, ...]


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

    ``digest`` holds one line, the manifest digest. ``runtime`` is carried over from the base so
    images stacked on images still know their interpreter.
    """

    layout: File
    digest: File
    tarball: File | None  # None for a pulled base (oci_pull)
    tags: tuple[str, ...]
    layers: tuple[Layer, ...] = ()
    runtime: PythonRuntimeInfo | None = None
