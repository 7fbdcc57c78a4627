"""Push an OCI image layout to a registry (``pbuild push //pkg:image REF``).

Every blob is first checked with ``HEAD`` and skipped when present; a blob this machine pushed
to another repository of the same registry is cross-mounted instead of uploaded; the rest is
uploaded monolithically (one ``PUT``) or, above ``chunk_size``, in ``PATCH`` chunks. The
manifest goes last, so a tag never names an image whose blobs are incomplete; an image index
goes after every platform's manifest.

Artifacts the layout lists (an SBOM's OCI 1.1 artifact manifest, whose ``subject`` is a platform's
manifest) are pushed by digest after the image. A registry that answers the referrers API
(``GET /v2/<name>/referrers/<digest>``) finds them by their subject itself; for one that does not
(Debian's docker-registry), the OCI 1.1 fallback: an image index tagged ``sha256-<subject hex>``
lists the subject's referrers, merged with the one already there. The layout is read
through :mod:`pbuild.lib.oci.layout`, so every blob is held to its descriptor before it is sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from dataclasses import dataclass

from pbuild.lib import atomicio, determinism
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.lib.oci.errors import LayoutError, RegistryError
from pbuild.lib.oci.reference import Reference
from pbuild.lib.oci.registry.transport import Client, Credentials, refused

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024


def media_type_of(body: bytes, fallback: str) -> str:
    """The ``mediaType`` a manifest or index names itself, else ``fallback``."""
    try:
        doc = json.loads(body)
    except ValueError:
        return fallback
    media = doc.get("mediaType") if isinstance(doc, dict) else None
    return media if isinstance(media, str) and media else fallback


def children_of(body: bytes, media_type: str, where: str) -> tuple[list[Descriptor], list[Descriptor]]:
    """The blobs (config, layers) and the child manifests a manifest or index refers to."""
    doc = json.loads(body)
    if media_type in mediatypes.INDEX_TYPES:
        return [], [Descriptor.from_json(m, where, error=RegistryError) for m in doc.get("manifests", [])]
    blobs = [Descriptor.from_json(doc.get("config"), where, error=RegistryError)]
    blobs += [Descriptor.from_json(layer, where, error=RegistryError) for layer in doc.get("layers", [])]
    return blobs, []


@dataclass(frozen=True)
class PushReport:
    """What a push did: bytes and blobs sent, blobs the registry already had or mounted."""

    reference: str
    digest: str
    bytes_uploaded: int
    blobs_uploaded: int
    blobs_skipped: int
    blobs_mounted: int = 0
    manifests_pushed: int = 1
    chunks_uploaded: int = 0  # PATCH requests of chunked uploads (blobs above chunk_size)
    artifacts: tuple[str, ...] = ()  # artifact manifests pushed by digest (the SBOMs)
    referrers_tags: tuple[str, ...] = ()  # ``sha256-<hex>`` tags written (no referrers API)


class _MountHistory:
    """Which repositories of a registry this machine pushed each blob to, for cross-repo mounts."""

    def __init__(self, state_dir: str | None, registry: str) -> None:
        self._path = os.path.join(state_dir, "pushed-blobs.json") if state_dir else None
        self._registry = registry
        self._data: dict[str, dict[str, list[str]]] = {}
        if self._path:
            with contextlib.suppress(OSError, ValueError):
                with open(self._path, encoding="utf-8") as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict):
                    self._data = loaded

    def sources(self, digest: str, repository: str) -> list[str]:
        repos = self._data.get(self._registry, {}).get(digest, [])
        return [r for r in repos if r != repository and isinstance(r, str)]

    def record(self, digest: str, repository: str) -> None:
        repos = self._data.setdefault(self._registry, {}).setdefault(digest, [])
        if repository not in repos:
            repos.append(repository)
            del repos[:-8]  # a few recent sources are enough

    def save(self) -> None:
        if not self._path:
            return
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        atomicio.write_bytes(self._path, determinism.canonical_json(self._data))


def default_state_dir() -> str:
    """``$PBUILD_CACHE/registry`` or ``~/.cache/pbuild/registry``."""
    base = os.environ.get("PBUILD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pbuild")
    return os.path.join(base, "registry")


def push_layout(layout_dir: str, reference: str, *, plain_http: bool = False,
                credentials: Credentials | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                state_dir: str | None = None, timeout_s: float = 300.0) -> PushReport:
    """Push the single image of the OCI layout ``layout_dir`` to ``reference`` (tag or digest).

    ``state_dir`` keeps the cross-mount history (default :func:`default_state_dir`).
    Raises :class:`RegistryError` with the registry's own message when it refuses.
    """
    ref = Reference.parse(reference)
    try:
        top = oci_layout.pick_image(layout_dir)
    except LayoutError as exc:  # a push that cannot start is a failed command (exit 1), as before
        raise RegistryError(exc.message, hint=exc.hint) from None
    history = _MountHistory(state_dir if state_dir is not None else default_state_dir(), ref.registry)
    client = Client(ref, plain_http=plain_http, credentials=credentials, timeout_s=timeout_s)
    pusher = _Pusher(client, ref, layout_dir, history, chunk_size)
    try:
        digest = pusher.push_manifest(top, tag=ref.tag or ref.digest or "latest")
        artifacts = [e.blob for e in oci_layout.read_index(layout_dir, artifacts=True) if e.artifact_type]
        for number, artifact in enumerate(artifacts, 1):
            blob = oci_layout.Blob(layout_dir, artifact.descriptor, f"artifact {number}", "index.json")
            pusher.push_artifact(blob)
        pusher.push_referrers_tags()
    except LayoutError as exc:
        raise RegistryError(exc.message, hint=exc.hint) from None
    finally:
        client.close()
        with contextlib.suppress(OSError):
            history.save()
    if ref.digest and digest != ref.digest:
        raise RegistryError(f"the layout's image is {digest}, not the digest {ref.digest} in the reference",
                            hint="push by tag, or name the digest the image really has")
    return PushReport(reference=str(ref), digest=digest, bytes_uploaded=pusher.bytes_uploaded,
                      blobs_uploaded=pusher.blobs_uploaded, blobs_skipped=pusher.blobs_skipped,
                      blobs_mounted=pusher.blobs_mounted, manifests_pushed=pusher.manifests_pushed,
                      chunks_uploaded=pusher.chunks_uploaded, artifacts=tuple(pusher.artifacts),
                      referrers_tags=tuple(pusher.referrers_tags))


def referrers_tag(subject: str) -> str:
    """The tag of the referrers fallback for ``subject`` (``sha256:<hex>`` -> ``sha256-<hex>``)."""
    return subject.replace(":", "-")


class _Pusher:
    """One push: the blobs sent so far and what each cost."""

    def __init__(self, client: Client, ref: Reference, layout_dir: str, history: _MountHistory,
                 chunk_size: int) -> None:
        self.client = client
        self.ref = ref
        self.layout_dir = layout_dir
        self.history = history
        self.chunk_size = max(chunk_size, 1)
        self.scope = f"repository:{ref.repository}:pull,push"
        self.bytes_uploaded = self.blobs_uploaded = self.blobs_skipped = self.blobs_mounted = 0
        self.manifests_pushed = self.chunks_uploaded = 0
        self._done: set[str] = set()
        self.artifacts: list[str] = []
        self.referrers_tags: list[str] = []
        self._referrers: dict[str, list[dict[str, object]]] = {}  # subject digest -> descriptors

    def push_artifact(self, blob: oci_layout.Blob) -> None:
        """Push an artifact manifest by digest and remember it as a referrer of its subject."""
        body = oci_layout.read_blob(blob)
        self.push_manifest(blob, tag=blob.digest)
        self.artifacts.append(blob.digest)
        doc = json.loads(body)
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if not isinstance(subject, dict):
            return
        subject_desc = Descriptor.from_json(subject, f"the artifact {blob.digest}", error=RegistryError)
        entry: dict[str, object] = {"mediaType": media_type_of(body, mediatypes.OCI_MANIFEST),
                                    "digest": blob.digest, "size": blob.size}
        artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        if isinstance(artifact_type, str):
            entry["artifactType"] = artifact_type
        if isinstance(doc.get("annotations"), dict):
            entry["annotations"] = doc["annotations"]
        self._referrers.setdefault(subject_desc.digest, []).append(entry)

    def push_referrers_tags(self) -> None:
        """For each subject: nothing if the registry has the referrers API, else the tag fallback."""
        for subject, entries in sorted(self._referrers.items()):
            api = self.client.request("GET", self.client.url(f"/v2/{self.ref.repository}/referrers/{subject}"),
                                      scopes=(self.scope,), headers={"Accept": mediatypes.OCI_INDEX})
            if api.status == 200:
                continue  # the registry lists referrers by their subject itself
            tag = referrers_tag(subject)
            url = self.client.url(f"/v2/{self.ref.repository}/manifests/{tag}")
            existing = self.client.request("GET", url, scopes=(self.scope,),
                                           headers={"Accept": mediatypes.OCI_INDEX})
            manifests: list[dict[str, object]] = []
            if existing.status == 200:
                try:
                    old = json.loads(existing.body)
                    manifests = [m for m in old.get("manifests", []) if isinstance(m, dict)]
                except (ValueError, AttributeError):
                    manifests = []  # not an index we can read: replaced by ours
            elif existing.status != 404:
                raise refused(self.ref, f"GET of the referrers tag {tag}", existing)
            known = {m.get("digest") for m in manifests}
            added = [e for e in entries if e["digest"] not in known]
            if not added and existing.status == 200:
                continue
            body = determinism.canonical_json({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                                               "manifests": manifests + added})
            resp = self.client.request("PUT", url, scopes=(self.scope,),
                                       headers={"Content-Type": mediatypes.OCI_INDEX}, body=body)
            if resp.status not in (200, 201):
                raise refused(self.ref, f"the referrers index {tag} for {self.ref}", resp)
            self.manifests_pushed += 1
            self.referrers_tags.append(tag)

    def push_manifest(self, blob: oci_layout.Blob, *, tag: str) -> str:
        body = oci_layout.read_blob(blob)  # held to its descriptor: size and digest
        media_type = media_type_of(body, blob.descriptor.media_type or mediatypes.OCI_MANIFEST)
        where = oci_layout.blob_path(self.layout_dir, blob.digest)
        blobs, children = children_of(body, media_type, where)
        parent = f"the {blob.what} {blob.digest}"
        for number, child in enumerate(children, 1):
            self.push_manifest(oci_layout.Blob(self.layout_dir, child, f"manifest {number}", parent),
                               tag=child.digest)
        for number, desc in enumerate(blobs):
            what = "image config" if number == 0 else f"layer {number}"
            self.push_blob(oci_layout.Blob(self.layout_dir, desc, what, parent))
        url = self.client.url(f"/v2/{self.ref.repository}/manifests/{tag}")
        resp = self.client.request("PUT", url, scopes=(self.scope,), headers={"Content-Type": media_type}, body=body)
        if resp.status not in (200, 201):
            raise refused(self.ref, f"the manifest {blob.digest} for {self.ref}", resp)
        self.manifests_pushed += 1
        stated = resp.header("Docker-Content-Digest")
        if stated and stated != blob.digest:
            raise RegistryError(f"registry {self.ref.registry} stored the manifest as {stated}, expected {blob.digest}")
        return blob.digest

    def push_blob(self, blob: oci_layout.Blob) -> None:
        desc = blob.descriptor
        if desc.digest in self._done:
            return
        self._done.add(desc.digest)
        path = blob.path()  # inside the layout, a file, of the size its descriptor says
        head = self.client.request("HEAD", self.client.url(f"/v2/{self.ref.repository}/blobs/{desc.digest}"),
                                   scopes=(self.scope,))
        if head.status == 200:
            self.blobs_skipped += 1
            self.history.record(desc.digest, self.ref.repository)
            return
        if head.status != 404:
            raise refused(self.ref, f"HEAD of blob {desc.digest}", head)
        location = None
        for source in self.history.sources(desc.digest, self.ref.repository):
            query = urllib.parse.urlencode({"mount": desc.digest, "from": source})
            resp = self.client.request(
                "POST", self.client.url(f"/v2/{self.ref.repository}/blobs/uploads/?{query}"),
                scopes=(self.scope, f"repository:{source}:pull"), headers={"Content-Length": "0"}, body=b"")
            if resp.status == 201:
                self.blobs_mounted += 1
                self.history.record(desc.digest, self.ref.repository)
                return
            if resp.status == 202:
                location = resp.header("Location")  # mount refused: upload into this session
                break
        self.upload(desc, path, location)
        self.blobs_uploaded += 1
        self.bytes_uploaded += desc.size
        self.history.record(desc.digest, self.ref.repository)

    def _start(self) -> str:
        resp = self.client.request("POST", self.client.url(f"/v2/{self.ref.repository}/blobs/uploads/"),
                                   scopes=(self.scope,), headers={"Content-Length": "0"}, body=b"")
        location = resp.header("Location")
        if resp.status != 202 or not location:
            raise refused(self.ref, f"starting an upload to {self.ref.repository}", resp)
        return location

    def upload(self, desc: Descriptor, path: str, location: str | None) -> None:
        location = urllib.parse.urljoin(self.client.url("/"), location or self._start())
        size = desc.size  # checked against the file by Blob.path()
        if size > self.chunk_size:
            location = self._upload_chunks(desc, path, location)
            body: bytes | str = b""
            length = 0
        else:
            body, length = path, size
        sep = "&" if "?" in location else "?"
        resp = self.client.request(
            "PUT", f"{location}{sep}{urllib.parse.urlencode({'digest': desc.digest})}", scopes=(self.scope,),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)}, body=body)
        if resp.status not in (201, 204):
            raise refused(self.ref, f"blob {desc.digest} ({size} bytes)", resp)

    def _upload_chunks(self, desc: Descriptor, path: str, location: str) -> str:
        with open(path, "rb") as f:
            offset = 0
            while chunk := f.read(self.chunk_size):
                end = offset + len(chunk) - 1
                resp = self.client.request(
                    "PATCH", location, scopes=(self.scope,), body=chunk,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                             "Content-Range": f"{offset}-{end}"})
                if resp.status != 202 or not resp.header("Location"):
                    raise refused(self.ref, f"chunk {offset}-{end} of blob {desc.digest}", resp)
                location = urllib.parse.urljoin(location, resp.header("Location") or "")
                offset = end + 1
                self.chunks_uploaded += 1
        return location
