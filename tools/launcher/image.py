"""Read an image from disk: an OCI layout (``oci:PATH[:REF]``) or a ``docker-archive:PATH``.

Only the small JSON documents are read here; layer blobs are opened lazily (and only when a
layer is not yet in the layer store), decompressed as a stream, and checked against their
diff_id while they are extracted.

Every blob of an OCI layout is checked against the descriptor that names it, digest and size,
from ``index.json`` down: the manifest (and a nested index) against the index, the config and
each layer blob against the manifest. So an edited config cannot run another entrypoint under
the manifest digest that ``ps`` shows. A docker archive names its config by digest: checked too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

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
    open_blob: Callable[[], BlobReader]
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


class Descriptor(NamedTuple):
    """What an OCI descriptor promises of a blob: its digest and size, and who said so."""

    digest: str
    size: int
    what: str
    """e.g. "image config" (for messages)."""
    layout: str
    parent: str
    """e.g. "the image manifest sha256:..." or "index.json"."""

    @classmethod
    def parse(cls, data: Any, what: str, layout: str, parent: str) -> Descriptor:
        digest = data.get("digest") if isinstance(data, dict) else None
        size = data.get("size") if isinstance(data, dict) else None
        if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise LauncherError(
                f"OCI layout {layout}: {parent} has no valid descriptor (digest and size) for its {what}",
                hint="the layout is malformed; rebuild it",
            )
        _blob_path(layout, digest)  # refuses a malformed digest
        return cls(digest, size, what, layout, parent)

    def fail(self, problem: str) -> LauncherError:
        return LauncherError(
            f"OCI layout {self.layout}: the {self.what} blob {self.digest} {problem}, "
            f"but {self.parent} says {self.digest} of {self.size} bytes",
            hint="the layout was changed or damaged after it was written; rebuild or copy it again",
        )

    def check(self, hasher: Any, size: int) -> None:
        if size != self.size:
            raise self.fail(f"has {size} bytes")
        actual = f"{self.digest.partition(':')[0]}:{hasher.hexdigest()}"
        if actual != self.digest:
            raise self.fail(f"has digest {actual}")


def _read_blob_json(descriptor: Descriptor) -> Any:
    """The JSON blob ``descriptor`` names, checked against it before it is parsed."""
    path = _blob_path(descriptor.layout, descriptor.digest)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(descriptor.size) if size == descriptor.size else b""
    except FileNotFoundError:
        raise LauncherError(
            f"OCI layout {descriptor.layout} lacks the {descriptor.what} blob {descriptor.digest}",
            hint="the layout is incomplete; rebuild or copy it again",
        ) from None
    except OSError as e:
        raise LauncherError(f"cannot read the {descriptor.what} {path}: {e}") from None
    descriptor.check(hashlib.new(descriptor.digest.partition(":")[0], data), size)
    try:
        document = json.loads(data)
    except ValueError as e:
        raise LauncherError(f"the {descriptor.what} {path} is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise LauncherError(f"the {descriptor.what} {path} is not a JSON object")
    return document


def _load_oci(reference: str, rest: str) -> Image:
    layout, ref_name = rest, None
    if not os.path.isdir(layout) and ":" in rest:
        layout, _, ref_name = rest.rpartition(":")
    if not os.path.isdir(layout):
        raise LauncherError(
            f"OCI layout {layout} is not a directory", hint="build the image first, or check the path"
        )
    index = _read_json(os.path.join(layout, "index.json"), "OCI index")
    if not isinstance(index, dict):
        raise LauncherError(f"OCI index {os.path.join(layout, 'index.json')} is not a JSON object")
    descriptor = _pick_manifest(layout, index, ref_name)
    manifest = _read_blob_json(descriptor)
    parent = f"the image manifest {descriptor.digest}"
    config = _read_blob_json(Descriptor.parse(manifest.get("config"), "image config", layout, parent))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layer_descriptors = manifest.get("layers") or []
    if len(diff_ids) != len(layer_descriptors):
        raise LauncherError(
            f"image {reference}: the manifest lists {len(layer_descriptors)} layers but the config "
            f"{len(diff_ids)} diff_ids"
        )
    layers = []
    for i, (diff_id, layer) in enumerate(zip(diff_ids, layer_descriptors, strict=True)):
        blob = Descriptor.parse(layer, f"layer {i + 1}", layout, parent)

        def opener(blob: Descriptor = blob) -> BlobReader:
            return BlobReader(_blob_path(layout, blob.digest), size=blob.size, descriptor=blob)

        layers.append(Layer(diff_id, layer.get("mediaType", ""), opener))
    return Image(reference, descriptor.digest, config, tuple(layers))


def _pick_manifest(layout: str, index: dict[str, Any], ref_name: str | None) -> Descriptor:
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
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
            (m.get("annotations") or {}).get("org.opencontainers.image.ref.name", str(m.get("digest")))
            for m in manifests
        )
        raise LauncherError(
            f"OCI layout {layout} holds {len(manifests)} images",
            hint=f"pick one with oci:{layout}:NAME ({names})",
        )
    chosen = manifests[0]
    if chosen.get("mediaType") in _INDEX_TYPES:  # a nested index: take this machine's platform
        nested_descriptor = Descriptor.parse(chosen, "image index", layout, "index.json")
        nested = _read_blob_json(nested_descriptor)
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        for m in nested.get("manifests") or []:
            platform = (m.get("platform") if isinstance(m, dict) else None) or {}
            if platform.get("os", "linux") == "linux" and platform.get("architecture", arch) == arch:
                return Descriptor.parse(
                    m, "image manifest", layout, f"the image index {nested_descriptor.digest}"
                )
        raise LauncherError(f"OCI layout {layout} has no image for linux/{arch}")
    if chosen.get("mediaType", next(iter(_MANIFEST_TYPES))) not in _MANIFEST_TYPES:
        raise LauncherError(f"OCI layout {layout}: unsupported manifest type {chosen.get('mediaType')}")
    return Descriptor.parse(chosen, "image manifest", layout, "index.json")


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
        self, path: str, *, offset: int = 0, size: int, descriptor: Descriptor | None = None
    ) -> None:
        super().__init__()
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            if descriptor is None:
                raise
            raise LauncherError(
                f"OCI layout {descriptor.layout} lacks the {descriptor.what} blob {descriptor.digest}",
                hint="the layout is incomplete; rebuild or copy it again",
            ) from None
        self._file.seek(offset)
        self._left = size
        self._descriptor = descriptor
        self._hash = hashlib.new(descriptor.digest.partition(":")[0]) if descriptor else None

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
        self._descriptor.check(self._hash, os.fstat(self._file.fileno()).st_size)

    def close(self) -> None:
        self._file.close()
        super().close()
