"""A small OCI distribution API client: push an OCI image layout, pull an image pinned by digest.

Push (``pbuild push //pkg:image REF``): every blob is first checked with ``HEAD`` and skipped
when present; a blob this machine pushed to another repository of the same registry is
cross-mounted instead of uploaded; the rest is uploaded monolithically (one ``PUT``) or, above
``chunk_size``, in ``PATCH`` chunks. The manifest goes last, so a tag never names an image whose
blobs are incomplete.

Pull (an image ``base`` such as ``127.0.0.1:5000/py@sha256:...``): the manifest and every blob
are verified against their digests and kept in a content-addressed cache, so a second pull of the
same digest needs no network at all.

Auth: anonymous first; on a ``401`` the ``WWW-Authenticate`` challenge decides: ``Basic`` sends
the credentials, ``Bearer`` fetches a token from the realm (with the credentials, when there are
any) for the scopes the request needs. Credentials come from ``PBUILD_REGISTRY_USER`` and
``PBUILD_REGISTRY_PASSWORD``, else from the Docker config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``, ``auths`` entries with a base64 ``auth``), else from the containers
auth file podman and skopeo write (``$REGISTRY_AUTH_FILE`` or
``$XDG_RUNTIME_DIR/containers/auth.json``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pbuild.engine.errors import EXIT_BUILD_FAILED, PbuildError
from pbuild.tools.fstree import remove_tree

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
_READ_CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_REPO = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"


class RegistryError(PbuildError):
    """A push or pull that the registry refused or that could not reach it."""

    exit_code = EXIT_BUILD_FAILED


class ReferenceError_(PbuildError):
    """An image reference that cannot be parsed (bad input: exit 2)."""


# ---------------------------------------------------------------------------------------------
# References and credentials


@dataclass(frozen=True)
class Reference:
    """``REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a reference; a missing registry means Docker Hub, as docker and podman do."""
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.fullmatch(digest):
                raise ReferenceError_(f"image reference {text!r}: {digest!r} is not a sha256 digest",
                                      hint="write REGISTRY/REPO@sha256:<64 hex digits>")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1:]
            if not _TAG.fullmatch(tag):
                raise ReferenceError_(f"image reference {text!r}: bad tag {tag!r}",
                                      hint="a tag is up to 128 letters, digits, '_', '.' or '-'")
        first, _, remainder = rest.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = _DOCKER_HUB, rest if "/" in rest else f"library/{rest}"
        if not _REPO.fullmatch(repository):
            raise ReferenceError_(f"image reference {text!r}: bad repository name {repository!r}",
                                  hint="repository names are lowercase letters, digits and separators . _ - /")
        return cls(registry, repository, tag, digest)

    @property
    def api_host(self) -> str:
        return _DOCKER_HUB_API if self.registry == _DOCKER_HUB else self.registry

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def _auth_files() -> Iterator[str]:
    docker_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    yield os.path.join(docker_dir, "config.json")
    if os.environ.get("REGISTRY_AUTH_FILE"):
        yield os.environ["REGISTRY_AUTH_FILE"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json")


def find_credentials(registry: str) -> Credentials | None:
    """Credentials for ``registry`` from the environment or the Docker/containers auth files."""
    user = os.environ.get("PBUILD_REGISTRY_USER")
    if user:
        return Credentials(user, os.environ.get("PBUILD_REGISTRY_PASSWORD", ""))
    keys = {registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/"}
    if registry == _DOCKER_HUB:
        keys.add("https://index.docker.io/v1/")
    for path in _auth_files():
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        auths = config.get("auths") if isinstance(config, dict) else None
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if key not in keys or not isinstance(entry, dict):
                continue
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    decoded = base64.b64decode(entry["auth"]).decode()
                except (ValueError, UnicodeDecodeError):
                    raise RegistryError(f"{path}: auths[{key!r}].auth is not base64 of USER:PASSWORD",
                                        hint="log in again (podman login / docker login)") from None
                name, _, password = decoded.partition(":")
                return Credentials(name, password)
            if isinstance(entry.get("username"), str):
                return Credentials(entry["username"], str(entry.get("password", "")))
    return None


# ---------------------------------------------------------------------------------------------
# HTTP with registry auth


@dataclass
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    values = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', params))
    return scheme.lower(), values


def _registry_errors(body: bytes) -> str:
    """The messages of an OCI error body (``{"errors": [{"code", "message"}]}``), if any."""
    try:
        doc = json.loads(body)
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in doc.get("errors", []))
    except (ValueError, AttributeError, TypeError):
        return body[:200].decode(errors="replace").strip()


class _Client:
    """One registry's HTTP endpoint with its auth state. Used from one thread at a time."""

    def __init__(self, ref: Reference, *, plain_http: bool, credentials: Credentials | None,
                 timeout_s: float) -> None:
        self.ref = ref
        self.scheme = "http" if plain_http else "https"
        self.host = ref.api_host
        self.credentials = credentials if credentials is not None else find_credentials(ref.registry)
        self.timeout_s = timeout_s
        self._auth: dict[str, str] = {}  # scope key -> Authorization value
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout_s, blocksize=1 << 18)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout_s, blocksize=1 << 18)
            self._conns[key] = conn
        return conn

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | str | None,
              sink: Callable[[bytes], None] | None) -> _Response:
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                if isinstance(body, str):  # a file to stream
                    with open(body, "rb") as f:
                        conn.request(method, path, body=f, headers=headers)
                else:
                    conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                if resp.status == 200 and sink is not None:
                    while chunk := resp.read(_READ_CHUNK):
                        sink(chunk)
                    data = b""
                else:
                    data = resp.read()
                if resp.will_close:
                    conn.close()
                    self._conns.pop((parts.scheme, parts.netloc), None)
                return _Response(resp.status, dict(resp.getheaders()), data)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                self._conns.pop((parts.scheme, parts.netloc), None)
                if attempt == 0 and sink is None:
                    continue  # a kept-alive connection the server closed meanwhile
                raise RegistryError(f"connection to {parts.netloc} lost during {method} {parts.path}: {exc}") from None
            except ssl.SSLError as exc:
                conn.close()
                self._conns.pop((parts.scheme, parts.netloc), None)
                raise RegistryError(f"TLS handshake with {parts.netloc} failed: {exc}",
                                    hint="for a local registry that speaks plain HTTP, pass --plain-http") from None
            except TimeoutError:
                conn.close()
                self._conns.pop((parts.scheme, parts.netloc), None)
                raise RegistryError(f"registry {parts.netloc} did not answer {method} {parts.path} within "
                                    f"{self.timeout_s:g}s") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._conns.pop((parts.scheme, parts.netloc), None)
                hint = "is the registry running and the address right?"
                if self.scheme == "https" and isinstance(exc, http.client.BadStatusLine | ConnectionError):
                    hint += " For a registry over plain HTTP, pass --plain-http."
                raise RegistryError(f"cannot reach registry {parts.netloc} ({type(exc).__name__}: {exc})",
                                    hint=hint) from None
        raise AssertionError("unreachable")

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def request(self, method: str, url: str, *, scopes: tuple[str, ...], headers: Mapping[str, str] | None = None,
                body: bytes | str | None = None, sink: Callable[[bytes], None] | None = None,
                follow: bool = True) -> _Response:
        """Send a request, answering one auth challenge, following redirects for downloads."""
        scope_key = " ".join(scopes)
        all_headers = dict(headers or {})
        challenged = False
        for _ in range(6):
            parts = urllib.parse.urlsplit(url)
            same_host = parts.netloc == self.host
            send = dict(all_headers)
            if same_host and scope_key in self._auth:
                send["Authorization"] = self._auth[scope_key]
            resp = self._send(method, url, send, body, sink)
            if resp.status == 401 and same_host and not challenged:
                # First challenge of this request: no auth yet, or a token that expired mid-push.
                challenged = True
                self._auth.pop(scope_key, None)
                self._authenticate(resp, scopes)
                if scope_key in self._auth:
                    continue
            if resp.status in (301, 302, 303, 307, 308) and follow and resp.header("Location"):
                # Blob downloads are often redirected to storage that must not see our token.
                url = urllib.parse.urljoin(url, resp.header("Location") or "")
                continue
            if resp.status == 401:
                who = f"as {self.credentials.username!r}" if self.credentials else "anonymously"
                raise RegistryError(
                    f"registry {self.ref.registry} refused access {who} for {method} {parts.path} (HTTP 401"
                    f"{': ' + _registry_errors(resp.body) if resp.body else ''})",
                    hint="set PBUILD_REGISTRY_USER and PBUILD_REGISTRY_PASSWORD, or log in with "
                         "`podman login` / `docker login` (~/.docker/config.json)")
            return resp
        raise RegistryError(f"registry {self.ref.registry}: too many redirects or auth rounds for {url}")

    def _authenticate(self, resp: _Response, scopes: tuple[str, ...]) -> None:
        challenge = resp.header("WWW-Authenticate") or ""
        scheme, params = _parse_challenge(challenge)
        key = " ".join(scopes)
        if scheme == "basic":
            if self.credentials is not None:
                pair = base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode())
                self._auth[key] = f"Basic {pair.decode()}"
            return
        if scheme != "bearer" or "realm" not in params:
            return
        query = [("service", params["service"])] if "service" in params else []
        query += [("scope", s) for s in scopes] if scopes else ([("scope", params["scope"])] if "scope" in params else [])
        realm = params["realm"]
        token_url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self.credentials is not None:
            basic = base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        token_parts = urllib.parse.urlsplit(token_url)
        answer = self._send("GET", token_url, headers, None, None)
        if answer.status != 200:
            raise RegistryError(
                f"token server {token_parts.netloc} refused a token for {' '.join(scopes) or 'this registry'} "
                f"(HTTP {answer.status}: {_registry_errors(answer.body)})",
                hint="check PBUILD_REGISTRY_USER/PBUILD_REGISTRY_PASSWORD or your docker/podman login")
        try:
            doc = json.loads(answer.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {token_parts.netloc} answered without a token")
        self._auth[key] = f"Bearer {token}"


def _fail(ref: Reference, what: str, resp: _Response, hint: str | None = None) -> RegistryError:
    detail = _registry_errors(resp.body)
    if resp.status == 413 and hint is None:
        hint = "the registry (or a proxy in front of it) limits request sizes; raise its limit " \
               "(e.g. nginx client_max_body_size) or push in smaller chunks"
    if resp.status == 403 and hint is None:
        hint = f"the credentials may read but not write {ref.repository}"
    return RegistryError(f"registry {ref.registry} refused {what} (HTTP {resp.status}"
                         f"{': ' + detail if detail else ''})", hint=hint)


# ---------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Descriptor:
        if (not isinstance(doc, dict) or not isinstance(doc.get("digest"), str)
                or not _DIGEST.fullmatch(doc["digest"]) or not isinstance(doc.get("size"), int)):
            raise RegistryError(f"{where}: not a valid sha256 descriptor: {json.dumps(doc)[:200]}")
        return cls(str(doc.get("mediaType", "")), doc["digest"], doc["size"])


def _blob_path(layout_dir: str, digest: str) -> str:
    return os.path.join(layout_dir, "blobs", "sha256", digest.split(":", 1)[1])


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise RegistryError(f"{what} {path} is missing",
                            hint="push an OCI layout directory (with index.json and blobs/sha256/)") from None
    except ValueError as exc:
        raise RegistryError(f"{what} {path} is not valid JSON: {exc}") from None


def _manifests_of(layout_dir: str) -> Descriptor:
    """The one image of a layout (several ``index.json`` entries may name it, one per tag)."""
    index = _read_json(os.path.join(layout_dir, "index.json"), "OCI layout index")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    where = f"{layout_dir}/index.json"
    entries = {d.digest: d for d in (Descriptor.from_json(m, where) for m in manifests or [])} \
        if isinstance(manifests, list) else {}
    if len(entries) != 1:
        raise RegistryError(f"{where} lists {len(entries)} images; pbuild pushes a layout with exactly one",
                            hint="push the layout of a single image target")
    return next(iter(entries.values()))


def _media_type(body: bytes, fallback: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return fallback
    media = doc.get("mediaType") if isinstance(doc, dict) else None
    return media if isinstance(media, str) and media else fallback


def _children(body: bytes, media_type: str, where: str) -> tuple[list[Descriptor], list[Descriptor]]:
    """The blobs (config, layers) and the child manifests a manifest or index refers to."""
    doc = json.loads(body)
    if media_type in _INDEX_TYPES:
        return [], [Descriptor.from_json(m, where) for m in doc.get("manifests", [])]
    blobs = [Descriptor.from_json(doc.get("config"), where)]
    blobs += [Descriptor.from_json(layer, where) for layer in doc.get("layers", [])]
    return blobs, []


# ---------------------------------------------------------------------------------------------
# Push


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
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self._path), prefix=".pushed-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._data, f, sort_keys=True)
        os.replace(tmp, self._path)


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
    top = _manifests_of(layout_dir)
    history = _MountHistory(state_dir if state_dir is not None else default_state_dir(), ref.registry)
    client = _Client(ref, plain_http=plain_http, credentials=credentials, timeout_s=timeout_s)
    pusher = _Pusher(client, ref, layout_dir, history, chunk_size)
    try:
        digest = pusher.push_manifest(top, tag=ref.tag or ref.digest or "latest")
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
                      chunks_uploaded=pusher.chunks_uploaded)


class _Pusher:
    def __init__(self, client: _Client, ref: Reference, layout_dir: str, history: _MountHistory,
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

    def _path(self, digest: str) -> str:
        return f"/v2/{self.ref.repository}/{digest}"

    def push_manifest(self, desc: Descriptor, *, tag: str) -> str:
        path = _blob_path(self.layout_dir, desc.digest)
        try:
            with open(path, "rb") as f:
                body = f.read()
        except FileNotFoundError:
            raise RegistryError(f"the OCI layout {self.layout_dir} lacks manifest blob {desc.digest}",
                                hint="rebuild the image target") from None
        if "sha256:" + hashlib.sha256(body).hexdigest() != desc.digest:
            raise RegistryError(f"{path} does not match its digest {desc.digest}: the layout is damaged",
                                hint="rebuild the image target")
        media_type = _media_type(body, desc.media_type or OCI_MANIFEST)
        blobs, children = _children(body, media_type, path)
        for child in children:
            self.push_manifest(child, tag=child.digest)
        for blob in blobs:
            self.push_blob(blob)
        url = self.client.url(f"/v2/{self.ref.repository}/manifests/{tag}")
        resp = self.client.request("PUT", url, scopes=(self.scope,), headers={"Content-Type": media_type}, body=body)
        if resp.status not in (200, 201):
            raise _fail(self.ref, f"the manifest {desc.digest} for {self.ref}", resp)
        self.manifests_pushed += 1
        stated = resp.header("Docker-Content-Digest")
        if stated and stated != desc.digest:
            raise RegistryError(f"registry {self.ref.registry} stored the manifest as {stated}, expected {desc.digest}")
        return desc.digest

    def push_blob(self, desc: Descriptor) -> None:
        if desc.digest in self._done:
            return
        self._done.add(desc.digest)
        path = _blob_path(self.layout_dir, desc.digest)
        if not os.path.isfile(path):
            raise RegistryError(f"the OCI layout {self.layout_dir} lacks blob {desc.digest}",
                                hint="rebuild the image target")
        head = self.client.request("HEAD", self.client.url(f"/v2/{self.ref.repository}/blobs/{desc.digest}"),
                                   scopes=(self.scope,))
        if head.status == 200:
            self.blobs_skipped += 1
            self.history.record(desc.digest, self.ref.repository)
            return
        if head.status != 404:
            raise _fail(self.ref, f"HEAD of blob {desc.digest}", head)
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
            raise _fail(self.ref, f"starting an upload to {self.ref.repository}", resp)
        return location

    def upload(self, desc: Descriptor, path: str, location: str | None) -> None:
        location = urllib.parse.urljoin(self.client.url("/"), location or self._start())
        size = os.path.getsize(path)
        if size != desc.size:
            raise RegistryError(f"blob {desc.digest} in {self.layout_dir} has {size} bytes, its descriptor says "
                                f"{desc.size}: the layout is damaged", hint="rebuild the image target")
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
            raise _fail(self.ref, f"blob {desc.digest} ({size} bytes)", resp)

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
                    raise _fail(self.ref, f"chunk {offset}-{end} of blob {desc.digest}", resp)
                location = urllib.parse.urljoin(location, resp.header("Location") or "")
                offset = end + 1
                self.chunks_uploaded += 1
        return location


def push_main(layout_dir: str, reference: str, *, plain_http: bool, out: Callable[[str], None]) -> int:
    """``pbuild push``: push, report what was sent, and turn refusals into messages and exit codes."""
    try:
        report = push_layout(layout_dir, reference, plain_http=plain_http)
    except PbuildError as exc:
        out(exc.render())
        return exc.exit_code
    out(f"pushed {report.reference}@{report.digest}" if not Reference.parse(reference).digest
        else f"pushed {report.reference}")
    out(f"  {report.blobs_uploaded} blob(s) uploaded ({report.bytes_uploaded:,} bytes, {_human(report.bytes_uploaded)}), "
        f"{report.blobs_skipped} already present, {report.blobs_mounted} mounted from other repositories")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# ---------------------------------------------------------------------------------------------
# Pull


@dataclass(frozen=True)
class PullReport:
    reference: str
    digest: str  # the manifest written to the layout (the platform's one when pulling an index)
    bytes_downloaded: int
    blobs_downloaded: int
    blobs_cached: int


def default_blob_cache() -> str:
    return os.path.join(os.path.dirname(default_state_dir()), "oci-blobs")


class _BlobCache:
    """Verified blobs by digest: ``<dir>/sha256/<hex>``; every entry is checked when used."""

    def __init__(self, directory: str) -> None:
        self.dir = os.path.join(directory, "sha256")

    def path(self, digest: str) -> str:
        return os.path.join(self.dir, digest.split(":", 1)[1])

    def get(self, digest: str, size: int | None) -> str | None:
        path = self.path(digest)
        try:
            actual = _sha256_of(path)
        except FileNotFoundError:
            return None
        if actual == digest and (size is None or os.path.getsize(path) == size):
            return path
        os.unlink(path)  # damaged: drop it and fetch again
        return None

    def put(self, digest: str, size: int | None, fill: Callable[[Callable[[bytes], None]], None]) -> str:
        os.makedirs(self.dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".fetch-")
        try:
            hasher = hashlib.sha256()
            received = 0
            with os.fdopen(fd, "wb") as f:
                def sink(chunk: bytes) -> None:
                    nonlocal received
                    received += len(chunk)
                    hasher.update(chunk)
                    f.write(chunk)

                fill(sink)
            got = "sha256:" + hasher.hexdigest()
            if got != digest or (size is not None and received != size):
                raise RegistryError(f"downloaded blob {digest} does not match: got {got} ({received} bytes"
                                    f"{'' if size is None else f', expected {size}'})",
                                    hint="the registry served damaged data; try again or check the registry")
            os.chmod(tmp, 0o444)
            os.replace(tmp, self.path(digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return self.path(digest)


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def pull_image(reference: str, dest_layout_dir: str, *, plain_http: bool = False,
               credentials: Credentials | None = None, cache_dir: str | None = None,
               platform: str = "linux/amd64", timeout_s: float = 300.0) -> PullReport:
    """Pull the image ``reference`` (pinned by digest) into a fresh OCI layout at ``dest_layout_dir``.

    Everything is verified against its digest and cached in ``cache_dir`` (default
    :func:`default_blob_cache`); when the cache holds it all, no network is used. For an image
    index, the manifest of ``platform`` (``os/arch``) is chosen.
    """
    ref = Reference.parse(reference)
    if not ref.digest:
        raise ReferenceError_(f"image reference {reference!r} is not pinned by digest",
                              hint="write it as REGISTRY/REPO@sha256:... (`skopeo inspect docker://REF` shows "
                                   "the digest)")
    cache = _BlobCache(cache_dir or default_blob_cache())
    puller = _Puller(ref, cache, plain_http=plain_http, credentials=credentials, timeout_s=timeout_s)
    try:
        digest, media_type, body_path = puller.resolve(ref.digest, platform)
        size = os.path.getsize(body_path)
        with open(body_path, "rb") as f:
            blobs, _ = _children(f.read(), media_type, digest)
        paths = {digest: body_path}
        for blob in blobs:
            paths[blob.digest] = puller.fetch(blob.digest, blob.size, manifest=False)
    finally:
        puller.close()
    _write_layout(dest_layout_dir, Descriptor(media_type, digest, size), paths)
    return PullReport(str(ref), digest, puller.bytes_downloaded, puller.blobs_downloaded, puller.blobs_cached)


class _Puller:
    def __init__(self, ref: Reference, cache: _BlobCache, *, plain_http: bool, credentials: Credentials | None,
                 timeout_s: float) -> None:
        self.ref = ref
        self.cache = cache
        self._client: _Client | None = None
        self._client_args = (plain_http, credentials, timeout_s)
        self.scope = f"repository:{ref.repository}:pull"
        self.bytes_downloaded = self.blobs_downloaded = self.blobs_cached = 0

    def client(self) -> _Client:
        if self._client is None:  # only when the cache lacks something: offline stays offline
            plain_http, credentials, timeout_s = self._client_args
            self._client = _Client(self.ref, plain_http=plain_http, credentials=credentials, timeout_s=timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def fetch(self, digest: str, size: int | None, *, manifest: bool) -> str:
        cached = self.cache.get(digest, size)
        if cached is not None:
            self.blobs_cached += 1
            return cached
        kind = "manifests" if manifest else "blobs"
        url = self.client().url(f"/v2/{self.ref.repository}/{kind}/{digest}")
        headers = {"Accept": _ACCEPT} if manifest else {}
        status: list[_Response] = []

        def fill(sink: Callable[[bytes], None]) -> None:
            status.append(self.client().request("GET", url, scopes=(self.scope,), headers=headers, sink=sink))
            if status[-1].status != 200:
                raise _fail(self.ref, f"GET of {kind[:-1]} {digest}", status[-1],
                            hint="check that the digest exists in the registry" if status[-1].status == 404 else None)

        path = self.cache.put(digest, size, fill)
        self.blobs_downloaded += 1
        self.bytes_downloaded += os.path.getsize(path)
        return path

    def resolve(self, digest: str, platform: str) -> tuple[str, str, str]:
        """The image manifest's digest, media type and cached path (descending into an index)."""
        path = self.fetch(digest, None, manifest=True)
        with open(path, "rb") as f:
            body = f.read()
        media_type = _media_type(body, OCI_MANIFEST)
        if media_type not in _INDEX_TYPES:
            return digest, media_type, path
        os_name, _, arch = platform.partition("/")
        for entry in json.loads(body).get("manifests", []):
            plat = entry.get("platform") or {}
            if plat.get("os") == os_name and plat.get("architecture") == arch:
                child = Descriptor.from_json(entry, digest)
                return self.resolve(child.digest, platform)
        raise RegistryError(f"image index {self.ref} has no manifest for platform {platform}",
                            hint="pin the digest of a single-platform manifest")


def _write_layout(dest: str, top: Descriptor, paths: Mapping[str, str]) -> None:
    """Write an OCI layout beside ``dest`` and swap it into place."""
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".pull-")
    try:
        blob_dir = os.path.join(tmp, "blobs", "sha256")
        os.makedirs(blob_dir)
        for digest, source in sorted(paths.items()):
            target = os.path.join(blob_dir, digest.split(":", 1)[1])
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
        with open(os.path.join(tmp, "oci-layout"), "w", encoding="utf-8") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": top.media_type, "digest": top.digest, "size": top.size}]}
        with open(os.path.join(tmp, "index.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, sort_keys=True, separators=(",", ":")))
        old = None
        if os.path.lexists(dest):
            old = tempfile.mkdtemp(dir=parent, prefix=".old-")
            os.rename(dest, os.path.join(old, "layout"))
        os.rename(tmp, dest)
        if old:
            remove_tree(old, ignore_errors=True)
    except BaseException:
        remove_tree(tmp, ignore_errors=True)
        raise
