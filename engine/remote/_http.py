"""Bazel's HTTP remote cache protocol: ``GET``/``PUT`` of ``PREFIX/ac/<sha256>`` (a serialized
REAPI ActionResult) and ``PREFIX/cas/<sha256>`` (the blob's bytes).

Any server that stores what is PUT and serves it back works: nginx with WebDAV, bazel-remote,
S3-like gateways. Connections are kept alive in a small pool shared by the build's threads.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from pbuild.engine.remote import RemoteSettings
from pbuild.engine.remote._base import (
    BlobToUpload,
    Missing,
    Refused,
    RemoteBase,
    RemoteFailure,
    TimedOut,
    Transient,
    UploadRefused,
    auth_headers,
)
from pbuild.lib import http

# Below this size a PUT costs no more than asking first with HEAD.
HEAD_THRESHOLD = 64 * 1024


def _status_failure(method: str, what: str, status: int, reason: str) -> RemoteFailure:
    text = f"HTTP {status} {reason} for {method} {what}"
    if status == 401:
        return Refused(f"credentials refused ({text})")
    if status == 403 and method == "GET":
        return Refused(f"access denied ({text})")
    if method == "PUT" and status in (403, 405, 501):
        return UploadRefused(text)
    if status >= 500 or status in (408, 429):
        return Transient(text)
    return RemoteFailure(text)


class HttpRemoteCache(RemoteBase):
    """A :class:`pbuild.engine.remote.RemoteCache` over Bazel's HTTP cache protocol."""

    def __init__(self, settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]) -> None:
        super().__init__(settings, cache_dir=cache_dir, warn=warn)
        parts = urllib.parse.urlsplit(settings.url or "")
        self._prefix = parts.path.rstrip("/")
        self._headers = dict(auth_headers(settings))
        host = parts.hostname or "localhost"
        netloc = f"[{host}]" if ":" in host else host  # the URL's user:password@ never reaches the socket
        self._pool = http.ConnectionPool(parts.scheme, f"{netloc}:{parts.port}" if parts.port else netloc,
                                         settings.timeout_s)

    # --- one exchange ------------------------------------------------------------------------

    def _exchange(self, method: str, path: str, *, body_path: str | None = None, body: bytes | None = None,
                  length: int = 0, sink: Callable[[bytes], None] | None = None) -> tuple[int, str, bytes]:
        """Send one request (:func:`pbuild.lib.http.exchange`); return status, reason and body
        (streamed to ``sink`` on a 200). Failures become the remote cache's own kinds."""
        headers = dict(self._headers)
        if method == "PUT":
            headers["Content-Length"] = str(length)
            headers["Content-Type"] = "application/octet-stream"
        try:
            resp = http.exchange(self._pool, method, path, headers=headers, body=body, body_path=body_path, sink=sink)
        except http.ExchangeTimedOut as exc:
            what = "no answer" if exc.phase == "request" else "body not received"
            raise TimedOut(f"{what} within {self.settings.timeout_s:g}s") from None
        except http.ConnectionLost as exc:
            if exc.phase == "body":
                raise Transient(f"download interrupted: {exc}") from None
            raise Transient(f"connection lost: {exc.cause}") from None
        except http.ExchangeError as exc:
            raise Transient(f"download interrupted: {exc}" if exc.phase == "body" else str(exc)) from None
        return resp.status, resp.reason, resp.body

    def _url(self, kind: str, sha256: str) -> str:
        return f"{self._prefix}/{kind}/{sha256}"

    # --- protocol hooks ----------------------------------------------------------------------

    def _read_action_result(self, key_sha256: str) -> bytes | None:
        status, reason, data = self._exchange("GET", self._url("ac", key_sha256))
        if status == 200:
            return data
        if status == 404:
            return None
        raise _status_failure("GET", f"ac/{key_sha256[:12]}…", status, reason)

    def _write_action_result(self, key_sha256: str, encoded: bytes) -> None:
        status, reason, _ = self._exchange("PUT", self._url("ac", key_sha256), body=encoded, length=len(encoded))
        if status not in (200, 201, 204):
            raise _status_failure("PUT", f"ac/{key_sha256[:12]}…", status, reason)

    def _read_blob(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        status, reason, _ = self._exchange("GET", self._url("cas", sha256), sink=sink)
        if status == 404:
            raise Missing("the server does not have it (an action result names a missing blob)")
        if status != 200:
            raise _status_failure("GET", f"cas/{sha256[:12]}…", status, reason)

    def _upload_blobs(self, blobs: list[BlobToUpload], replace: frozenset[str]) -> None:
        for blob in blobs:
            if blob.size >= HEAD_THRESHOLD and blob.sha256 not in replace \
                    and self.attempt(lambda b=blob: self._present(b)):  # type: ignore[misc]
                continue
            self.attempt(lambda b=blob: self._put_blob(b))  # type: ignore[misc]
            self.count("blobs_uploaded")
            self.count("bytes_uploaded", blob.size)

    def _present(self, blob: BlobToUpload) -> bool:
        status, reason, _ = self._exchange("HEAD", self._url("cas", blob.sha256))
        if status == 200:
            return True
        if status == 404:
            return False
        raise _status_failure("HEAD", f"cas/{blob.sha256[:12]}…", status, reason)

    def _put_blob(self, blob: BlobToUpload) -> None:
        status, reason, _ = self._exchange("PUT", self._url("cas", blob.sha256), body_path=blob.path,
                                           length=blob.size)
        if status not in (200, 201, 204):
            raise _status_failure("PUT", f"cas/{blob.sha256[:12]}…", status, reason)

    def _close(self) -> None:
        self._pool.close()
