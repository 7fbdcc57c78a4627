"""The registry transport: HTTP to one registry's distribution API, with its auth.

Auth: anonymous first; on a ``401`` the ``WWW-Authenticate`` challenge decides: ``Basic`` sends
the credentials, ``Bearer`` fetches a token from the realm (with the credentials, when there are
any) for the scopes the request needs. Credentials come from ``PBUILD_REGISTRY_USER`` and
``PBUILD_REGISTRY_PASSWORD``, else from the Docker config (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``, ``auths`` entries with a base64 ``auth``), else from the containers
auth file podman and skopeo write (``$REGISTRY_AUTH_FILE`` or
``$XDG_RUNTIME_DIR/containers/auth.json``).

The exchange itself (keep-alive, streamed bodies, a sink for downloads) is
:mod:`pbuild.lib.http`, shared with the engine's HTTP remote cache; this module adds the auth
rounds, redirects that drop the token when they leave the registry, and the messages.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from pbuild.lib import http as lib_http
from pbuild.lib.oci.errors import RegistryError
from pbuild.lib.oci.reference import DOCKER_HUB, Reference


@dataclass(frozen=True)
class Credentials:
    """A user name and password for one registry (the password never shows in a repr)."""

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
    if registry == DOCKER_HUB:
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


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    values = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', params))
    return scheme.lower(), values


def registry_errors(body: bytes) -> str:
    """The messages of an OCI error body (``{"errors": [{"code", "message"}]}``), if any."""
    try:
        doc = json.loads(body)
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                         for e in doc.get("errors", []))
    except (ValueError, AttributeError, TypeError):
        return body[:200].decode(errors="replace").strip()


class Client:
    """One registry's HTTP endpoint with its auth state. Used from one thread at a time."""

    def __init__(self, ref: Reference, *, plain_http: bool, credentials: Credentials | None,
                 timeout_s: float) -> None:
        self.ref = ref
        self.scheme = "http" if plain_http else "https"
        self.host = ref.api_host
        self.credentials = credentials if credentials is not None else find_credentials(ref.registry)
        self.timeout_s = timeout_s
        self._auth: dict[str, str] = {}  # scope key -> Authorization value
        self._pools: dict[tuple[str, str], lib_http.ConnectionPool] = {}

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | str | None,
              sink: Callable[[bytes], None] | None) -> lib_http.Response:
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        pool = self._pools.get((parts.scheme, parts.netloc))
        if pool is None:  # the registry, its token realm, storage it redirects to: one pool each
            pool = self._pools[(parts.scheme, parts.netloc)] = lib_http.ConnectionPool(
                parts.scheme, parts.netloc, self.timeout_s, size=1)
        try:
            if isinstance(body, str):  # a file to stream
                return lib_http.exchange(pool, method, path, headers=headers, body_path=body, sink=sink)
            return lib_http.exchange(pool, method, path, headers=headers, body=body, sink=sink)
        except lib_http.ConnectionLost as exc:
            raise RegistryError(f"connection to {parts.netloc} lost during {method} {parts.path}: "
                                f"{exc.cause}") from None
        except lib_http.TlsFailed as exc:
            raise RegistryError(f"TLS handshake with {parts.netloc} failed: {exc.cause}",
                                hint="for a local registry that speaks plain HTTP, pass --plain-http") from None
        except lib_http.ExchangeTimedOut:
            raise RegistryError(f"registry {parts.netloc} did not answer {method} {parts.path} within "
                                f"{self.timeout_s:g}s") from None
        except lib_http.ExchangeError as exc:
            hint = "is the registry running and the address right?"
            if self.scheme == "https" and isinstance(exc.cause, http.client.BadStatusLine | ConnectionError):
                hint += " For a registry over plain HTTP, pass --plain-http."
            raise RegistryError(f"cannot reach registry {parts.netloc} ({exc})", hint=hint) from None

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def request(self, method: str, url: str, *, scopes: tuple[str, ...], headers: Mapping[str, str] | None = None,
                body: bytes | str | None = None, sink: Callable[[bytes], None] | None = None,
                follow: bool = True) -> lib_http.Response:
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
                    f"{': ' + registry_errors(resp.body) if resp.body else ''})",
                    hint="set PBUILD_REGISTRY_USER and PBUILD_REGISTRY_PASSWORD, or log in with "
                         "`podman login` / `docker login` (~/.docker/config.json)")
            return resp
        raise RegistryError(f"registry {self.ref.registry}: too many redirects or auth rounds for {url}")

    def _authenticate(self, resp: lib_http.Response, scopes: tuple[str, ...]) -> None:
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
                f"(HTTP {answer.status}: {registry_errors(answer.body)})",
                hint="check PBUILD_REGISTRY_USER/PBUILD_REGISTRY_PASSWORD or your docker/podman login")
        try:
            doc = json.loads(answer.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {token_parts.netloc} answered without a token")
        self._auth[key] = f"Bearer {token}"


def refused(ref: Reference, what: str, resp: lib_http.Response, hint: str | None = None) -> RegistryError:
    """The error for a request the registry answered with a failure status, in its own words."""
    detail = registry_errors(resp.body)
    if resp.status == 413 and hint is None:
        hint = "the registry (or a proxy in front of it) limits request sizes; raise its limit " \
               "(e.g. nginx client_max_body_size) or push in smaller chunks"
    if resp.status == 403 and hint is None:
        hint = f"the credentials may read but not write {ref.repository}"
    return RegistryError(f"registry {ref.registry} refused {what} (HTTP {resp.status}"
                         f"{': ' + detail if detail else ''})", hint=hint)
