"""Read an image from disk: an OCI layout (``oci:PATH[:REF]``) or a ``docker-archive:PATH``.

Only the small JSON documents are read here; layer blobs are opened lazily (and only when a
layer is not yet in the layer store), decompressed as a stream, and checked against their
diff_id while they are extracted.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import IO, Any, NamedTuple, cast

from pbuild.tools.launcher.errors import LauncherError

_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


class Layer(NamedTuple):
    """One layer: its uncompressed digest (the store key) and how to read it."""

    diff_id: str
    media_type: str
    open_blob: Callable[[], IO[bytes]]
    """Opens the (possibly compressed) blob as a binary stream."""


class Image(NamedTuple):
    """What the launcher needs of an image: where it came from, its config and its layers."""

    reference: str
    digest: str
    """The manifest digest (OCI) or the config digest (docker-archive): the image's identity."""
    config: dict[str, Any]
    layers: tuple[Layer, ...]

    @property
    def run_config(self) -> dict[str, Any]:
        """The ``config`` object of the image config (Entrypoint, Cmd, Env, ...), maybe empty."""
        return self.config.get("config") or {}


def load_image(reference: str) -> Image:
    """Load ``oci:PATH[:REF]`` or ``docker-archive:PATH``; errors say what is wrong and where."""
    kind, _, rest = reference.partition(":")
    if not rest:
        raise LauncherError(
            f"image reference {reference!r} has no transport",
            hint="use oci:PATH (an OCI layout directory) or docker-archive:PATH (a tar file)",
        )
    if kind == "oci":
        return _load_oci(reference, rest)
    if kind == "docker-archive":
        return _load_docker_archive(reference, rest)
    raise LauncherError(
        f"unknown image transport {kind!r} in {reference!r}",
        hint="use oci:PATH or docker-archive:PATH; a label such as //app:image is run through `pbuild run`",
    )


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise LauncherError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise LauncherError(f"cannot read {what} {path}: {e}") from None


def _blob_path(layout: str, digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if not hexdigest or "/" in digest or algorithm not in ("sha256", "sha512"):
        raise LauncherError(f"malformed digest {digest!r} in the OCI layout {layout}")
    return os.path.join(layout, "blobs", algorithm, hexdigest)


def _load_oci(reference: str, rest: str) -> Image:
    layout, ref_name = rest, None
    if not os.path.isdir(layout) and ":" in rest:
        layout, _, ref_name = rest.rpartition(":")
    if not os.path.isdir(layout):
        raise LauncherError(
            f"OCI layout {layout} is not a directory", hint="build the image first, or check the path"
        )
    index = _read_json(os.path.join(layout, "index.json"), "OCI index")
    descriptor = _pick_manifest(layout, index, ref_name)
    manifest = _read_json(_blob_path(layout, descriptor["digest"]), "image manifest")
    config = _read_json(_blob_path(layout, manifest["config"]["digest"]), "image config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layer_descriptors = manifest.get("layers") or []
    if len(diff_ids) != len(layer_descriptors):
        raise LauncherError(
            f"image {reference}: the manifest lists {len(layer_descriptors)} layers but the config "
            f"{len(diff_ids)} diff_ids"
        )
    layers = []
    for diff_id, layer in zip(diff_ids, layer_descriptors, strict=True):
        path = _blob_path(layout, layer["digest"])

        def opener(path: str = path) -> IO[bytes]:
            return open(path, "rb")

        layers.append(Layer(diff_id, layer.get("mediaType", ""), opener))
    return Image(reference, descriptor["digest"], config, tuple(layers))


def _pick_manifest(layout: str, index: dict[str, Any], ref_name: str | None) -> dict[str, Any]:
    manifests = index.get("manifests") or []
    if ref_name is not None:
        named = [
            m
            for m in manifests
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref_name
        ]
        if not named:
            raise LauncherError(f"OCI layout {layout} has no image named {ref_name!r}")
        manifests = named
    if not manifests:
        raise LauncherError(f"OCI layout {layout} lists no manifests in index.json")
    if len(manifests) > 1:
        names = sorted(
            (m.get("annotations") or {}).get("org.opencontainers.image.ref.name", m["digest"])
            for m in manifests
        )
        raise LauncherError(
            f"OCI layout {layout} holds {len(manifests)} images",
            hint=f"pick one with oci:{layout}:NAME ({names})",
        )
    chosen = manifests[0]
    if chosen.get("mediaType") in _INDEX_TYPES:  # a nested index: take this machine's platform
        nested = _read_json(_blob_path(layout, chosen["digest"]), "image index")
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        for m in nested.get("manifests") or []:
            platform = m.get("platform") or {}
            if platform.get("os", "linux") == "linux" and platform.get("architecture", arch) == arch:
                return m
        raise LauncherError(f"OCI layout {layout} has no image for linux/{arch}")
    if chosen.get("mediaType", next(iter(_MANIFEST_TYPES))) not in _MANIFEST_TYPES:
        raise LauncherError(f"OCI layout {layout}: unsupported manifest type {chosen.get('mediaType')}")
    return chosen


def _load_docker_archive(reference: str, path: str) -> Image:
    import tarfile

    try:
        archive = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        raise LauncherError(f"cannot read docker archive {path}: {e}") from None
    with archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers()}

        def read_member(name: str) -> Any:
            member = members.get(name)
            handle = archive.extractfile(member) if member else None
            if handle is None:
                raise LauncherError(f"docker archive {path} lacks {name}")
            return json.load(handle)

        manifest = read_member("manifest.json")
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise LauncherError(f"docker archive {path} must hold exactly one image (manifest.json)")
        entry = manifest[0]
        config = read_member(entry["Config"])
        offsets = {}
        for name in entry.get("Layers") or []:
            member = members.get(name)
            if member is None or not member.isfile():
                raise LauncherError(f"docker archive {path} lacks layer {name}")
            offsets[name] = (member.offset_data, member.size)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(offsets):
        raise LauncherError(f"docker archive {path}: {len(offsets)} layers but {len(diff_ids)} diff_ids")
    layers = []
    for diff_id, (offset, size) in zip(diff_ids, offsets.values(), strict=True):

        def opener(offset: int = offset, size: int = size) -> IO[bytes]:
            return cast(IO[bytes], _Slice(path, offset, size))

        layers.append(Layer(diff_id, "", opener))
    digest = "sha256:" + entry["Config"].rsplit("/", 1)[-1].removesuffix(".json")
    return Image(reference, digest, config, tuple(layers))


class _Slice(io.RawIOBase):
    """A read-only window onto part of a file (a layer inside a docker archive)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        n = self._file.readinto(view)
        self._left -= n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()
