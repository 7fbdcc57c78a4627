"""What the HTTP and gRPC remote caches share: failure policy, statistics, verified downloads,
the upload sequence and the conversion between pbuild's records and REAPI ``ActionResult``.

Failure policy. A remote cache only ever makes a build faster, so every problem ends in a
warning and local work, never in an exception reaching the engine:

* transient trouble (connection refused or reset, HTTP 5xx/429, gRPC UNAVAILABLE...) is retried
  ``settings.retries`` times with exponential backoff and jitter;
* a timeout is not retried: the server already had ``timeout_s`` to answer, and retrying would
  multiply the delay a dead server costs;
* the first failure of a build prints one warning; after ``MAX_CONSECUTIVE_FAILURES`` failed
  operations in a row the remote is disabled for the rest of the build;
* refused credentials disable the remote at once; a refused upload (read-only server) disables
  uploads only.

Damaged blobs. A server that serves wrong bytes for a blob still answers HEAD or
FindMissingBlobs with "present", so an upload that asks first would never replace it and every
client would download it, warn and rebuild, forever. A blob that failed verification is
therefore remembered for the build, and the next upload naming it sends the (re-verified) local
bytes without asking, overwriting the damaged copy on servers that replace on write.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pbuild.engine.remote import RemoteActionResult, RemoteOutput, RemoteSettings, RemoteStats
from pbuild.engine.remote._index import KnownPresent, sha256_file
from pbuild.engine.remote._wire import ActionResult, Digest, OutputFile, WireError
from pbuild.lib import atomicio

MAX_CONSECUTIVE_FAILURES = 3
MAX_DAMAGE_WARNINGS = 5
CREDENTIALS_ENV = "PBUILD_REMOTE_CREDENTIALS"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX64 = re.compile(r"[0-9a-f]{64}")
_T = TypeVar("_T")


class RemoteFailure(Exception):
    """An operation against the remote failed (after retries, if it was worth retrying)."""


class Transient(RemoteFailure):
    """Worth retrying: the server may answer the same request differently in a moment."""


class TimedOut(RemoteFailure):
    """The server did not answer within the timeout."""


class Refused(RemoteFailure):
    """The server refused our credentials: nothing else will work either."""


class UploadRefused(RemoteFailure):
    """The server refuses writes (read-only cache, missing permission)."""


class Missing(RemoteFailure):
    """The server lacks a blob that an action result names."""


class Corrupt(RemoteFailure):
    """The bytes received are not the blob that was asked for."""


@dataclass(frozen=True)
class BlobToUpload:
    """A blob to write to a CAS: its bytes are in the file ``path``, or in ``data`` (messages)."""

    sha256: str
    size: int
    path: str
    data: bytes | None = None


def display_url(url: str) -> str:
    """The URL without its userinfo, so credentials never reach a log or a warning."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def auth_headers(settings: RemoteSettings) -> list[tuple[str, str]]:
    """The configured headers plus an ``Authorization`` header from the URL's userinfo or the
    ``PBUILD_REMOTE_CREDENTIALS`` environment variable (``user:password`` for basic auth, or a
    complete header value such as ``Bearer TOKEN``). An explicit header wins over both."""
    headers = list(settings.headers)
    if any(name.lower() == "authorization" for name, _ in headers):
        return headers
    parts = urllib.parse.urlsplit(settings.url or "")
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers.append(("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()))
        return headers
    env = os.environ.get(CREDENTIALS_ENV, "").strip()
    if env:
        if " " in env:  # already a scheme and a token
            headers.append(("Authorization", env))
        else:
            headers.append(("Authorization", "Basic " + base64.b64encode(env.encode()).decode()))
    return headers


def known_present_path(cache_dir: str, settings: RemoteSettings) -> str:
    """Where the known-present records of this remote live (one file per URL and instance)."""
    ident = f"{display_url(settings.url or '')}\0{settings.instance_name}"
    return os.path.join(cache_dir, "remote", hashlib.sha256(ident.encode()).hexdigest()[:32], "present")


# ---------------------------------------------------------------------------------------------
# Conversions


def to_wire(result: RemoteActionResult, sizes: Mapping[str, int]) -> ActionResult:
    """pbuild's record as an REAPI ActionResult; ``sizes`` completes stdout/stderr digests."""

    def stream(sha: str | None, size: int | None) -> Digest | None:
        if sha is None:
            return None
        return Digest(sha, size if size is not None else sizes[sha])

    files = tuple(
        OutputFile(o.path, Digest(o.sha256, o.size), o.executable)
        for o in sorted(result.outputs, key=lambda o: o.path)
    )
    return ActionResult(
        output_files=files,
        exit_code=result.exit_code,
        stdout_digest=stream(result.stdout_sha256, result.stdout_size),
        stderr_digest=stream(result.stderr_sha256, result.stderr_size),
    )


def from_wire(data: bytes) -> RemoteActionResult:
    """Decode and validate an ActionResult read from a remote (raises :class:`Corrupt`).

    Paths must be normalized and relative (a hostile cache must not write outside the
    workspace), digests lowercase sha256, and only plain output files are understood.
    """
    try:
        wire = ActionResult.decode(data)
    except (WireError, UnicodeDecodeError) as exc:
        raise Corrupt(f"undecodable action result ({exc})") from None
    if wire.has_unsupported_outputs or wire.output_directories:
        raise Corrupt("action result has output directories, symlinks or inline data, which pbuild "
                      "does not write")
    outputs = []
    for f in wire.output_files:
        check_digest(f.digest)
        path = f.path
        if (not path or path.startswith("/") or posixpath.normpath(path) != path
                or path == ".." or path.startswith("../")):
            raise Corrupt(f"action result names an unsafe output path {path!r}")
        outputs.append(RemoteOutput(path, f.digest.hash, f.digest.size_bytes, f.is_executable))
    for stream in (wire.stdout_digest, wire.stderr_digest):
        if stream is not None:
            check_digest(stream)
    return RemoteActionResult(
        outputs=tuple(outputs),
        exit_code=wire.exit_code,
        stdout_sha256=wire.stdout_digest.hash if wire.stdout_digest else None,
        stderr_sha256=wire.stderr_digest.hash if wire.stderr_digest else None,
        stdout_size=wire.stdout_digest.size_bytes if wire.stdout_digest else None,
        stderr_size=wire.stderr_digest.size_bytes if wire.stderr_digest else None,
    )


def check_digest(digest: Digest) -> None:
    """Refuse (:class:`Corrupt`) a digest that is not lowercase sha256 hex with a size."""
    if not _HEX64.fullmatch(digest.hash) or digest.size_bytes < 0:
        raise Corrupt(f"action result has a malformed digest {digest.hash!r}/{digest.size_bytes}")


# ---------------------------------------------------------------------------------------------
# The shared client


class RemoteBase:
    """Policy shared by the protocol clients; subclasses implement the ``_``-prefixed hooks."""

    role = "remote cache"  # how messages name what this client talks to

    def __init__(self, settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]) -> None:
        self.settings = settings
        self.name = display_url(settings.url or "")
        if settings.instance_name:
            self.name += f" (instance {settings.instance_name!r})"
        self._warn = warn
        self._lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(
            ("bytes_uploaded", "blobs_uploaded", "bytes_downloaded", "blobs_downloaded",
             "action_results_uploaded", "hits", "misses", "errors", "executed"), 0)
        self._consecutive_failures = 0
        self._disabled = False
        self._upload_enabled = settings.upload
        self._warned: set[str] = set()
        self._damage_reports = 0
        # sha256 of blobs this server served wrong bytes for: written over on the next upload
        self._damaged: set[str] = set()
        self._known = KnownPresent(known_present_path(cache_dir, settings))

    # --- bookkeeping ---------------------------------------------------------------------

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def stats(self) -> RemoteStats:
        with self._lock:
            return RemoteStats(**self._counters, disabled=self._disabled)

    def warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self._warn(message)

    @property
    def disabled(self) -> bool:
        return self._disabled

    @property
    def uploading(self) -> bool:
        return self._upload_enabled and not self._disabled

    @property
    def upload_enabled(self) -> bool:
        """Whether uploads are on (settings, server capabilities) and the remote still in use."""
        return self.uploading

    def disable_uploads(self, reason: str) -> None:
        with self._lock:
            self._upload_enabled = False
        self.warn_once("upload-refused", f"{self.role} {self.name}: {reason}; not uploading for the rest "
                                         f"of this build (use --no-remote-upload for a read-only cache)")

    def _succeeded(self) -> None:
        with self._lock:
            self._consecutive_failures = 0

    def _failed(self, what: str, exc: Exception) -> None:
        """Account for a failed operation: one warning per build, disable after a streak."""
        self.count("errors")
        if isinstance(exc, UploadRefused):
            self.disable_uploads(f"{what} refused ({exc})")
            return
        with self._lock:
            # A missing blob is a healthy server's answer (eviction): it does not count towards
            # disabling the remote; everything else does.
            if not isinstance(exc, Missing):
                self._consecutive_failures += 1
            if isinstance(exc, Refused) or self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                self._disabled = True
        if isinstance(exc, Refused):
            self.warn_once("refused", f"{self.role} {self.name}: {exc}; building without the remote cache "
                                      f"(check the credentials in the URL, --remote-header or ${CREDENTIALS_ENV})")
        elif isinstance(exc, Corrupt | Missing):
            # Each damaged or missing blob is worth its own warning (it names what was wrong),
            # up to a few: a cache that lost a whole directory must not flood the output.
            with self._lock:
                self._damage_reports += 1
                shown = self._damage_reports
            if shown <= MAX_DAMAGE_WARNINGS:
                more = "; further ones are not reported" if shown == MAX_DAMAGE_WARNINGS else ""
                self._warn(f"{self.role} {self.name}: {what}: {exc}; doing the work locally{more}")
        else:
            self.warn_once("failure", f"{self.role} {self.name}: {what} failed ({exc}); continuing with "
                                      f"local work (the remote is skipped after {MAX_CONSECUTIVE_FAILURES} "
                                      f"failures in a row)")

    def attempt(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying :class:`Transient` failures with exponential backoff and jitter."""
        delay = 0.05
        for attempt in range(self.settings.retries + 1):
            try:
                return fn()
            except Transient:
                if attempt >= self.settings.retries or self._disabled:
                    raise
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # --- the RemoteCache protocol ----------------------------------------------------------

    def get_action_result(self, key_sha256: str) -> RemoteActionResult | None:
        if self._disabled:
            return None
        try:
            data = self.attempt(lambda: self._read_action_result(key_sha256))
            if data is not None:
                # If this is not what we uploaded, our next upload must not be skipped as done.
                self._known.forget_result(key_sha256, unless_encoded=hashlib.sha256(data).hexdigest())
            result = from_wire(data) if data is not None else None
        except RemoteFailure as exc:
            self._failed("reading an action result", exc)
            return None
        self._succeeded()
        self.count("hits" if result is not None else "misses")
        return result

    def fetch_blob(self, sha256: str, size: int, dest_path: str) -> bool:
        if sha256 == EMPTY_SHA256 and size == 0:
            # The empty blob needs no server (and some servers do not store it).
            self._write_verified(sha256, 0, dest_path, lambda sink: None)
            return True
        if self._disabled:
            return False
        try:
            self.attempt(lambda: self._write_verified(
                sha256, size, dest_path, lambda sink: self._read_blob(sha256, size, sink)))
        except RemoteFailure as exc:
            if isinstance(exc, Missing | Corrupt):
                self._known.forget_blob(sha256)
            if isinstance(exc, Corrupt):
                with self._lock:
                    self._damaged.add(sha256)
            self._failed(f"blob {sha256[:12]}… ({size} bytes)", exc)
            return False
        except OSError as exc:
            self.warn_once(f"local-{dest_path}", f"{self.role} {self.name}: cannot write {dest_path}: {exc}")
            return False
        self._succeeded()
        self._known.add_blob(sha256)
        self.count("blobs_downloaded")
        self.count("bytes_downloaded", size)
        return True

    def upload_action(self, key_sha256: str, result: RemoteActionResult, blobs: Mapping[str, str]) -> None:
        if not self.uploading:
            return
        try:
            needed = self._blobs_of(result, blobs)
        except (OSError, KeyError) as exc:
            self.warn_once(f"local-upload-{key_sha256}",
                           f"{self.role} {self.name}: not uploading action {key_sha256[:12]}…: "
                           f"its local output is unreadable ({exc})")
            return
        encoded = to_wire(result, {b.sha256: b.size for b in needed}).encode()
        encoded_sha = hashlib.sha256(encoded).hexdigest()
        with self._lock:
            damaged = frozenset(b.sha256 for b in needed if b.sha256 in self._damaged)
        if not damaged and self._known.has_result(key_sha256, encoded_sha):
            return
        try:
            if not all(sha256_file(b.path) == (b.sha256, b.size) for b in needed if b.sha256 in damaged):
                # Overwriting the server's copy with bytes that are wrong too would help nobody.
                self.warn_once(f"local-upload-{key_sha256}",
                               f"{self.role} {self.name}: not uploading action {key_sha256[:12]}…: "
                               f"its local output does not match its digest either")
                return
            todo = [b for b in needed if b.sha256 in damaged or not self._known.has_blob(b.sha256)]
            if todo:
                # An action result is written only after every blob it names is on the server.
                self._upload_blobs(todo, damaged)
                for blob in todo:
                    self._known.add_blob(blob.sha256)
                with self._lock:
                    self._damaged -= damaged
            if not self.uploading:
                return
            self.attempt(lambda: self._write_action_result(key_sha256, encoded))
        except RemoteFailure as exc:
            self._failed(f"uploading action {key_sha256[:12]}…", exc)
            return
        except OSError as exc:
            self.warn_once(f"local-upload-{key_sha256}",
                           f"{self.role} {self.name}: not uploading action {key_sha256[:12]}…: {exc}")
            return
        self._succeeded()
        self._known.add_result(key_sha256, encoded_sha)
        self.count("action_results_uploaded")

    def note_present(self, sha256s: Iterable[str]) -> None:
        for sha in sha256s:
            if not self._known.has_blob(sha):
                self._known.add_blob(sha)

    def close(self) -> None:
        self._known.save()
        self._close()

    # --- helpers for subclasses ---------------------------------------------------------------

    @staticmethod
    def _blobs_of(result: RemoteActionResult, blobs: Mapping[str, str]) -> list[BlobToUpload]:
        out: dict[str, BlobToUpload] = {}
        for output in result.outputs:
            out[output.sha256] = BlobToUpload(output.sha256, output.size, blobs[output.sha256])
        for sha in (result.stdout_sha256, result.stderr_sha256):
            if sha is not None and sha not in out:
                path = blobs[sha]
                out[sha] = BlobToUpload(sha, os.stat(path).st_size, path)
        return sorted(out.values(), key=lambda b: b.sha256)

    def _write_verified(self, sha256: str, size: int, dest_path: str,
                        produce: Callable[[Callable[[bytes], None]], None]) -> None:
        """Stream a blob into a temporary file beside ``dest_path``, check it, rename it.

        Downloads are many and small (one per output), so this avoids every avoidable system
        call: the directory is created only when missing.
        """
        with atomicio.writing(dest_path, parents=True) as handle:
            digest = hashlib.sha256()
            received = 0

            def sink(chunk: bytes) -> None:
                nonlocal received
                received += len(chunk)
                if received > size:
                    raise Corrupt(f"server sent more than the expected {size} bytes")
                digest.update(chunk)
                handle.write(chunk)

            produce(sink)
            if received != size:
                raise Corrupt(f"truncated download: {received} of {size} bytes")
            if digest.hexdigest() != sha256:
                raise Corrupt(f"wrong content: the bytes received hash to {digest.hexdigest()[:12]}…")

    @staticmethod
    def _chunks(path: str, chunk_size: int) -> Iterable[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    # --- protocol hooks -------------------------------------------------------------------------

    def _read_action_result(self, key_sha256: str) -> bytes | None:
        """The encoded ActionResult, or ``None`` when the server has none."""
        raise NotImplementedError

    def _write_action_result(self, key_sha256: str, encoded: bytes) -> None:
        raise NotImplementedError

    def _read_blob(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        """Stream the blob's bytes into ``sink``; raise :class:`Missing` when the server lacks it."""
        raise NotImplementedError

    def _upload_blobs(self, blobs: list[BlobToUpload], replace: frozenset[str]) -> None:
        """Make sure the server holds ``blobs``: checking first what it already has, except for
        those in ``replace`` (sha256s it served damaged), which are written without asking."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError
