"""Pull an image (``REGISTRY/REPO:TAG`` or ``REGISTRY/REPO@sha256:...``) into an OCI layout.

A tag is resolved to its manifest with one ``GET`` (the bytes' sha256 is held to the registry's
``Docker-Content-Digest`` when it sends one); from the digest on, the manifest and every blob are verified against their digests on the way in and kept in a
:class:`BlobStore` the caller passes: the engine passes its CAS under ``--cache-dir``, so a
second pull of the same digest needs no network at all (of a tag: the one manifest request) and the cache has one root. For an image
index, the manifest of the requested platform is chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from pbuild.lib.architectures import host_architecture
from pbuild.lib.digest import OciDigest
from pbuild.lib.http import Response
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.blobstore import BlobStore, DirectoryBlobStore
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.lib.oci.errors import InvalidReference, RegistryError
from pbuild.lib.oci.reference import Reference
from pbuild.lib.oci.registry.push import children_of, media_type_of
from pbuild.lib.oci.registry.transport import Client, Credentials, refused

#: The largest manifest or index a registry may send (registries themselves refuse above 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024

def host_platform_name() -> str:
    """This machine's platform as OCI names it (``linux/amd64``): what ``docker pull`` picks."""
    return f"linux/{host_architecture()}"


def parse_pull_reference(text: str) -> Reference:
    """A reference a pull can name: with a tag, a digest or both; a bare name is refused."""
    ref = Reference.parse(text)
    if ref.tag is None and ref.digest is None:
        raise InvalidReference(f"image reference {text!r} names neither a tag nor a digest",
                               hint=f"write {text}:TAG (e.g. {text}:latest) or {text}@sha256:<64 hex>; pbuild "
                                    "does not guess :latest")
    return ref


@dataclass(frozen=True)
class PullReport:
    """What a pull did: the manifest written and what came from the network or the store."""

    reference: str
    digest: str  # the manifest written to the layout (the platform's one when pulling an index)
    bytes_downloaded: int
    blobs_downloaded: int
    blobs_cached: int


def pull_image(reference: str, dest_layout_dir: str, *, plain_http: bool = False,
               credentials: Credentials | None = None, blobs: BlobStore | None = None,
               cache_dir: str | None = None, platform: str = "linux/amd64",
               timeout_s: float = 300.0, pinned: bool = True) -> PullReport:
    """Pull the image ``reference`` into a fresh OCI layout at ``dest_layout_dir``: pinned by
    digest, or (with ``pinned=False``) by tag or digest.

    Everything is verified against its digest and kept in ``blobs`` (or a
    :class:`DirectoryBlobStore` at ``cache_dir``; with neither, a temporary one); when the store
    holds it all, no network is used. For an image index, the manifest of ``platform``
    (``os/arch``) is chosen.
    """
    ref = Reference.parse_pinned(reference) if pinned else parse_pull_reference(reference)
    with contextlib.ExitStack() as stack:
        if blobs is None:
            if cache_dir is None:  # no store to keep them in: one for this pull only
                parent = os.path.dirname(os.path.abspath(dest_layout_dir)) or "."
                os.makedirs(parent, exist_ok=True)
                cache_dir = stack.enter_context(tempfile.TemporaryDirectory(dir=parent, prefix=".pull-"))
            blobs = DirectoryBlobStore(cache_dir)
        puller = _Puller(ref, blobs, plain_http=plain_http, credentials=credentials, timeout_s=timeout_s)
        try:
            top = ref.digest if ref.digest is not None else puller.resolve_tag()
            digest, media_type, body_path = puller.resolve(top, platform)
            size = os.path.getsize(body_path)
            with open(body_path, "rb") as handle:
                children, _ = children_of(handle.read(), media_type, digest)
            paths = {digest: body_path}
            for blob in children:
                paths[blob.digest] = puller.fetch(blob.digest, blob.size, manifest=False)
        finally:
            puller.close()
        oci_layout.publish_layout(dest_layout_dir, Descriptor(media_type, digest, size),
                                  files={d: oci_layout.BlobFile(p) for d, p in paths.items()})
    return PullReport(str(ref), digest, puller.bytes_downloaded, puller.blobs_downloaded, puller.blobs_cached)


class _Puller:
    """One pull: a client made only when the store lacks something (offline stays offline)."""

    def __init__(self, ref: Reference, blobs: BlobStore, *, plain_http: bool, credentials: Credentials | None,
                 timeout_s: float) -> None:
        self.ref = ref
        self.blobs = blobs
        self._client: Client | None = None
        self._client_args = (plain_http, credentials, timeout_s)
        self.scope = f"repository:{ref.repository}:pull"
        self.bytes_downloaded = self.blobs_downloaded = self.blobs_cached = 0

    def client(self) -> Client:
        if self._client is None:
            plain_http, credentials, timeout_s = self._client_args
            self._client = Client(self.ref, plain_http=plain_http, credentials=credentials, timeout_s=timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def fetch(self, digest: OciDigest, size: int | None, *, manifest: bool) -> str:
        cached = self.blobs.get(digest, size)
        if cached is not None:
            self.blobs_cached += 1
            return cached
        kind = "manifests" if manifest else "blobs"
        url = self.client().url(f"/v2/{self.ref.repository}/{kind}/{digest}")
        headers = {"Accept": mediatypes.ACCEPT} if manifest else {}
        status: list[Response] = []

        def fill(sink: Callable[[bytes], None]) -> None:
            status.append(self.client().request("GET", url, scopes=(self.scope,), headers=headers, sink=sink))
            if status[-1].status != 200:
                raise refused(self.ref, f"GET of {kind[:-1]} {digest}", status[-1],
                              hint="check that the digest exists in the registry" if status[-1].status == 404 else None)

        path = self.blobs.put(digest, size, fill)
        self.blobs_downloaded += 1
        self.bytes_downloaded += os.path.getsize(path)
        return path

    def resolve_tag(self) -> OciDigest:
        """The digest of the manifest (or index) the reference's tag names now, its bytes stored."""
        assert self.ref.tag is not None
        url = self.client().url(f"/v2/{self.ref.repository}/manifests/{self.ref.tag}")
        body = bytearray()

        def sink(chunk: bytes) -> None:
            body.extend(chunk)
            if len(body) > MAX_MANIFEST:
                raise RegistryError(f"registry {self.ref.registry}: the manifest of {self.ref} is larger than "
                                    f"{MAX_MANIFEST} bytes", hint="the registry served damaged data")

        resp = self.client().request("GET", url, scopes=(self.scope,), headers={"Accept": mediatypes.ACCEPT},
                                     sink=sink)
        if resp.status != 200:
            raise refused(self.ref, f"GET of the manifest of {self.ref}", resp,
                          hint=f"check that the tag exists (`skopeo list-tags docker://{self.ref.registry}/"
                               f"{self.ref.repository}`)" if resp.status == 404 else None)
        data = bytes(body)
        digest = OciDigest("sha256:" + hashlib.sha256(data).hexdigest())
        claimed = resp.header("Docker-Content-Digest")
        if claimed and claimed.strip() != digest:
            raise RegistryError(f"registry {self.ref.registry}: the manifest of {self.ref} has digest {digest}, "
                                f"but the registry says {claimed.strip()}",
                                hint="the registry or a proxy served damaged data; try again")
        if self.blobs.get(digest, len(data)) is None:
            self.blobs.put(digest, len(data), lambda put: put(data))
            self.bytes_downloaded += len(data)
        return digest

    def resolve(self, digest: OciDigest, platform: str) -> tuple[OciDigest, str, str]:
        """The image manifest's digest, media type and stored path (descending into an index)."""
        path = self.fetch(digest, None, manifest=True)
        with open(path, "rb") as handle:
            body = handle.read()
        media_type = media_type_of(body, mediatypes.OCI_MANIFEST)
        if media_type not in mediatypes.INDEX_TYPES:
            return digest, media_type, path
        os_name, _, arch = platform.partition("/")
        for entry in json.loads(body).get("manifests", []):
            plat = entry.get("platform") or {}
            if plat.get("os") == os_name and plat.get("architecture") == arch:
                child = Descriptor.from_json(entry, digest, error=RegistryError)
                return self.resolve(child.digest, platform)
        raise RegistryError(f"image index {self.ref} has no manifest for platform {platform}",
                            hint="pin the digest of a single-platform manifest")
