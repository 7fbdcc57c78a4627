"""Read an image from disk: an OCI layout (``oci:PATH[:REF]``) or a ``docker-archive:PATH``.

Only the small JSON documents are read here; layer blobs are opened lazily (and only when a
layer is not yet in the layer store), decompressed as a stream, and checked against their
diff_id while they are extracted.

Every blob of an OCI layout is checked against the descriptor that names it, digest and size,
from ``index.json`` down, by the reader the engine shares (:mod:`pbuild.lib.oci.layout`): the
manifest (and a nested index) against the index, the config and each layer blob against the
manifest (a layer's digest while it is streamed). So an edited config cannot run another entrypoint under
the manifest digest that ``ps`` shows. A docker archive names its config by digest: checked too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from pbuild.lib.errors import UserError
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci.errors import AmbiguousLayout
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.launcher.hostplatform import host_platform


class Layer(NamedTuple):
    """One layer: its uncompressed digest (the store key) and how to read it."""

    diff_id: str
    media_type: str
    open_blob: Callable[[], BlobReader]
    """Opens the (possibly compressed) blob as a binary stream."""


class Image(NamedTuple):
    """What the launcher needs of an image: where it came from, its config and its layers."""

    reference: str
    digest: str
    """The manifest digest (OCI) or the config digest (docker-archive): the image's identity."""
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    emulated: str | None = None
    """The platform when it is another architecture than this machine's (its programs run under
    qemu through binfmt_misc), else None."""

    @property
    def run_config(self) -> dict[str, Any]:
        """The ``config`` object of the image config (Entrypoint, Cmd, Env, ...), maybe empty."""
        return self.config.get("config") or {}


def load_image(reference: str, platform: str | None = None) -> Image:
    """Load ``oci:PATH[:REF]`` or ``docker-archive:PATH``; errors say what is wrong and where."""
    kind, _, rest = reference.partition(":")
    if not rest:
        raise LauncherError(
            f"image reference {reference!r} has no transport",
            hint="use oci:PATH (an OCI layout directory) or docker-archive:PATH (a tar file)",
        )
    if kind == "oci":
        return _check_platform(_load_oci(reference, rest, platform), platform)
    if kind == "docker-archive":
        return _check_platform(_load_docker_archive(reference, rest), platform)
    raise LauncherError(
        f"unknown image transport {kind!r} in {reference!r}",
        hint="use oci:PATH or docker-archive:PATH; a label such as //app:image is run through `pbuild run`",
    )


def image_platform(config: dict[str, Any]) -> str | None:
    """The ``os/architecture`` an image config names (``linux/arm64``), or None when it names none."""
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        return None
    os_name = config.get("os")
    return f"{os_name if isinstance(os_name, str) and os_name else 'linux'}/{arch}"


def _check_platform(image: Image, platform: str | None) -> Image:
    """The image's own platform against the one asked for (``--platform``, already checked to be
    runnable) or, without one, this machine's: another architecture runs only under emulation,
    and :mod:`.binfmt` says whether it can. A platform pbuild does not know is left to the kernel
    (an i386 image runs on amd64)."""
    own = image_platform(image.config)
    host = host_platform()
    if own is not None and platform is not None and own != platform:
        raise LauncherError(
            f"{image.reference} is a {own} image, not {platform}",
            hint=f"use --platform {own} or leave --platform out; an image target built for {platform} too "
                 "holds both (docs/platforms.md)",
        )
    if own is None or own == host:
        return image
    from pbuild.lib.platforms import Platform, PlatformError

    try:
        foreign = Platform.parse(own)
    except PlatformError:
        return image
    if str(foreign) == host:
        return image
    if platform is None:
        from pbuild.tools.launcher import binfmt

        binfmt.require(foreign, what=f"{image.reference} is a {own} image: ")
    return image._replace(emulated=str(foreign))


def _index_platforms(layout: str, ref_name: str | None) -> list[str] | None:
    """The platforms of the image index a layout's image is, or None if it is no (readable) index."""
    try:
        top = oci_layout.pick_image(layout, ref_name)
        if top.what != "image index":
            return None
        entries = oci_layout.read_document(top).get("manifests") or []
    except UserError:
        return None
    found = []
    for entry in entries:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and platform.get("architecture"):
            found.append(f"{platform.get('os') or 'linux'}/{platform['architecture']}")
    return found


def _load_oci(reference: str, rest: str, platform: str | None) -> Image:
    layout, ref_name = rest, None
    if not os.path.isdir(layout) and ":" in rest:
        layout, _, ref_name = rest.rpartition(":")
    try:
        image = oci_layout.read_image(layout, ref_name=ref_name, platform=platform or host_platform())
    except AmbiguousLayout as e:
        raise LauncherError(e.message, hint=f"pick one with oci:{layout}:NAME ({e.names})") from None
    except UserError as e:  # the shared reader's message, with the launcher's exit code
        wanted = platform or host_platform()
        platforms = _index_platforms(layout, ref_name)
        if platforms is not None and wanted not in platforms:
            raise LauncherError(
                f"{reference} has no image for {wanted}: its index holds {', '.join(platforms) or 'no platform'}",
                hint=f"run one of those with --platform {platforms[0]}" if platforms else
                     "rebuild the image for this platform",
            ) from None
        raise LauncherError(e.message, hint=e.hint) from None
    layers = []
    for layer in image.layers:

        def opener(blob: oci_layout.Blob = layer.blob, path: str = layer.path) -> BlobReader:
            return BlobReader(path, size=blob.size, descriptor=blob)

        layers.append(Layer(layer.diff_id, layer.blob.descriptor.media_type, opener))
    return Image(reference, image.digest, image.config, tuple(layers))


def _load_docker_archive(reference: str, path: str) -> Image:
    import tarfile

    try:
        archive = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        raise LauncherError(f"cannot read docker archive {path}: {e}") from None
    with archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers()}

        def read_member(name: str) -> bytes:
            member = members.get(name)
            handle = archive.extractfile(member) if member else None
            if handle is None:
                raise LauncherError(f"docker archive {path} lacks {name}")
            return handle.read()

        def parse(name: str, data: bytes) -> Any:
            try:
                return json.loads(data)
            except ValueError as e:
                raise LauncherError(f"docker archive {path}: {name} is not valid JSON: {e}") from None

        manifest = parse("manifest.json", read_member("manifest.json"))
        if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
            raise LauncherError(f"docker archive {path} must hold exactly one image (manifest.json)")
        entry = manifest[0]
        config_name = str(entry.get("Config"))
        raw_config = read_member(config_name)
        digest = "sha256:" + hashlib.sha256(raw_config).hexdigest()
        named = config_name.rsplit("/", 1)[-1].removesuffix(".json")
        if len(named) == 64 and all(c in "0123456789abcdef" for c in named) and f"sha256:{named}" != digest:
            raise LauncherError(
                f"docker archive {path}: the image config {config_name} has digest {digest}, "
                f"but its name says sha256:{named}",
                hint="the archive was changed or damaged after it was written; save it again",
            )
        config = parse(config_name, raw_config)
        offsets = {}
        for name in entry.get("Layers") or []:
            member = members.get(name)
            if member is None or not member.isfile():
                raise LauncherError(f"docker archive {path} lacks layer {name}")
            offsets[name] = (member.offset_data, member.size)
    if not isinstance(config, dict):
        raise LauncherError(f"docker archive {path}: the image config {config_name} is not a JSON object")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(offsets):
        raise LauncherError(f"docker archive {path}: {len(offsets)} layers but {len(diff_ids)} diff_ids")
    layers = []
    for diff_id, (offset, size) in zip(diff_ids, offsets.values(), strict=True):

        def opener(offset: int = offset, size: int = size) -> BlobReader:
            return BlobReader(path, offset=offset, size=size)

        layers.append(Layer(diff_id, "", opener))
    return Image(reference, digest, config, tuple(layers))


class BlobReader(io.RawIOBase):
    """A read-only window of ``size`` bytes at ``offset`` of a file: an OCI blob (hashed on the
    way, checked against its ``descriptor`` by :meth:`finish`) or a layer in a docker archive."""

    def __init__(
        self, path: str, *, offset: int = 0, size: int, descriptor: oci_layout.Blob | None = None
    ) -> None:
        super().__init__()
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            if descriptor is None:
                raise
            raise LauncherError(
                f"{descriptor.layout} is not a valid OCI layout: the {descriptor.what} blob "
                f"{descriptor.digest} is missing",
                hint="the layout is incomplete; rebuild or copy it again",
            ) from None
        self._file.seek(offset)
        self._left = size
        self._descriptor = descriptor
        self._hash = hashlib.sha256() if descriptor else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        n = self._file.readinto(view)
        if self._hash is not None:
            self._hash.update(view[:n])
        self._left -= n
        return n

    def finish(self) -> None:
        """Read what the consumer left (padding after a tar's end) and check the blob: its
        size (no byte short, no byte more) and its digest."""
        while self.read(1 << 20):
            pass
        if self._descriptor is None or self._hash is None:
            return
        try:
            self._descriptor.check(self._hash.hexdigest(), os.fstat(self._file.fileno()).st_size)
        except UserError as e:
            raise LauncherError(e.message, hint=e.hint) from None

    def close(self) -> None:
        self._file.close()
        super().close()
