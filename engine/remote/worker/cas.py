"""The worker's own content-addressed store, filled from the server's CAS and emptied into it.

Every blob a lease needs (the Command, the input root's Directory messages, input files,
toolchain layers) is fetched by sha256 from the server — several small ones per
``BatchReadBlobs``, large ones by ByteStream — verified, and kept under
``<cache dir>/worker/cas/<2 hex>/<sha256>`` read-only. A second action on the same inputs or the
same toolchain downloads nothing. Input files are hard-linked from here into exec roots; an
executable input gets its own read-only executable copy (``<sha256>.x``), since a hard link shares
its mode with every other name of the file.

Outputs go the other way: written into this store first (so the bytes uploaded are the bytes
hashed), then uploaded with ``FindMissingBlobs`` and batches or ByteStream.

The transport is the remote cache's gRPC client (:class:`pbuild.engine.remote._grpc.GrpcRemoteCache`):
its channel, headers, batching limits, retries and verified writes, not a second copy of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pbuild.engine.remote import RemoteSettings
from pbuild.engine.remote import _wire as wire
from pbuild.engine.remote._base import EMPTY_SHA256, BlobToUpload, Corrupt, Missing, RemoteFailure
from pbuild.engine.remote._grpc import _BATCH_READ, GrpcRemoteCache
from pbuild.engine.remote._wire import Digest
from pbuild.lib import atomicio

if TYPE_CHECKING:
    import grpc  # imported for real by _grpc, after it turned gRPC's fork support off

_BATCH_DIGESTS = 512  # digests per BatchReadBlobs request, whatever their sizes


class BlobMissing(Exception):
    """The server's CAS lacks blobs the action names (REAPI: FAILED_PRECONDITION, MISSING)."""

    def __init__(self, digests: Iterable[Digest], message: str) -> None:
        super().__init__(message)
        self.digests = tuple(digests)


class CasError(Exception):
    """A blob could not be had (server trouble, or bytes that are not the blob): the lease fails
    with this message and the server may give it to another worker."""


class ServerChannel(GrpcRemoteCache):
    """The gRPC connection a worker shares between its CAS traffic and the Bots service."""

    def __init__(self, settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]) -> None:
        super().__init__(settings, cache_dir=cache_dir, warn=warn)
        self._methods: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def _method(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        call = self._methods.get(method)
        if call is None:
            call = self.rpc.channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
            self._methods[method] = call
        return call

    def unary(self, method: str, request: bytes, *, timeout_s: float) -> bytes:
        """One call of a unary method not among the cache's (``/package.Service/Method``);
        raises ``grpc.RpcError``."""
        response: bytes = self._method(method)(request, timeout=timeout_s, metadata=self.rpc.metadata)
        return response

    def unary_future(self, method: str, request: bytes, *, timeout_s: float) -> grpc.Future:
        """The same call as a cancellable future (the Bots long-poll is cut short when a lease
        ends, so that its completion is reported at once)."""
        future: grpc.Future = self._method(method).future(request, timeout=timeout_s, metadata=self.rpc.metadata)
        return future

    def read_into(self, digest: Digest, dest: str) -> None:
        """Download one blob to ``dest``, verified, atomically; raises :class:`RemoteFailure`."""
        self.attempt(lambda: self._write_verified(
            digest.hash, digest.size_bytes, dest, lambda sink: self._read_blob(digest.hash, digest.size_bytes, sink)))

    def read_batch(self, digests: list[Digest]) -> dict[str, bytes]:
        """BatchReadBlobs of several small blobs: sha256 -> bytes (unverified) of those found;
        raises :class:`Missing` naming every blob the server reported absent."""
        request = wire.batch_read_blobs_request(self._instance, digests)
        data = self.attempt(lambda: self.rpc.call(_BATCH_READ, request, "BatchReadBlobs"))
        found: dict[str, bytes] = {}
        absent: list[str] = []
        for entry in wire.decode_batch_read_blobs_response(data):
            if entry.status.code == 5:
                absent.append(entry.digest.hash)
                continue
            self.rpc.raise_for_status(entry.status, "BatchReadBlobs")
            found[entry.digest.hash] = entry.data
        absent += [d.hash for d in digests if d.hash not in found and d.hash not in absent]
        if absent:
            raise Missing(" ".join(absent))
        return found

    def fits_batch(self, size: int) -> bool:
        return self.rpc.fits_batch(size)

    def upload(self, blobs: list[BlobToUpload]) -> None:
        """Make sure the server holds ``blobs`` (asks FindMissingBlobs first)."""
        self._upload_blobs(blobs, frozenset())


def _identity(data: bytes) -> bytes:
    return data


class WorkerCas:
    """The worker's local store (see the module docstring). Safe to use from several threads:
    every file appears by an atomic rename of a complete, verified temp file."""

    def __init__(self, root: str, channel: ServerChannel) -> None:
        self.root = root
        self.channel = channel
        os.makedirs(root, exist_ok=True)

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256[:2], sha256)

    def has(self, digest: Digest) -> bool:
        try:
            return os.stat(self.path(digest.hash)).st_size == digest.size_bytes
        except OSError:
            return False

    def fetch(self, digests: Iterable[Digest]) -> int:
        """Make every blob of ``digests`` present locally; return the bytes downloaded.

        Raises :class:`BlobMissing` (the server lacks some) or :class:`CasError`."""
        todo: dict[str, Digest] = {}
        for digest in digests:
            if digest.hash == EMPTY_SHA256 and digest.size_bytes == 0:
                if not self.has(digest):
                    self._store(digest, b"")
                continue
            if digest.hash not in todo and not self.has(digest):
                todo[digest.hash] = digest
        if not todo:
            return 0
        small = [d for d in todo.values() if self.channel.fits_batch(d.size_bytes)]
        large = [d for d in todo.values() if not self.channel.fits_batch(d.size_bytes)]
        missing: list[Digest] = []
        batch: list[Digest] = []
        budget = 0
        limit = self.channel.rpc.batch_limit // 2  # the server's stated limit, halved for overhead
        for digest in small:
            if batch and (budget + digest.size_bytes > limit or len(batch) >= _BATCH_DIGESTS):
                missing += self._fetch_batch(batch)
                batch, budget = [], 0
            batch.append(digest)
            budget += digest.size_bytes
        if batch:
            missing += self._fetch_batch(batch)
        for digest in large:
            try:
                self.channel.read_into(digest, self.path(digest.hash))
            except Missing:
                missing.append(digest)
            except RemoteFailure as exc:
                raise CasError(f"blob {digest.hash}/{digest.size_bytes}: {exc}") from None
            self._seal(self.path(digest.hash))
        if missing:
            names = ", ".join(f"{d.hash[:12]}…/{d.size_bytes}" for d in missing[:5])
            raise BlobMissing(missing, f"the server's CAS lacks {len(missing)} blob(s) the action needs: {names}")
        return sum(d.size_bytes for d in todo.values())

    def _fetch_batch(self, batch: list[Digest]) -> list[Digest]:
        try:
            found = self.channel.read_batch(batch)
        except Missing as exc:
            absent = set(str(exc).split())
            present = [d for d in batch if d.hash not in absent]
            missing = [d for d in batch if d.hash in absent]
            if present:
                missing += self._fetch_batch(present)
            return missing
        except RemoteFailure as exc:
            raise CasError(f"BatchReadBlobs: {exc}") from None
        for digest in batch:
            self._store(digest, found[digest.hash])
        return []

    def _store(self, digest: Digest, data: bytes) -> None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest.hash or len(data) != digest.size_bytes:
            raise CasError(f"the server sent wrong bytes for blob {digest.hash}/{digest.size_bytes} "
                           f"(they hash to {actual}/{len(data)})")
        dest = self.path(digest.hash)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        atomicio.write_bytes(dest, data, mode=0o444)

    @staticmethod
    def _seal(path: str) -> None:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o444)

    def read(self, digest: Digest) -> bytes:
        """A (small) blob's bytes, fetched first when absent: a Command or Directory message."""
        self.fetch([digest])
        with open(self.path(digest.hash), "rb") as f:
            return f.read()

    def executable_path(self, digest: Digest) -> str:
        """A read-only executable copy (0755 as REAPI's is_executable, never written through:
        the sandbox mounts the exec root read-only) of a present blob."""
        dest = self.path(digest.hash) + ".x"
        if not os.path.exists(dest):
            with atomicio.temp_beside(dest) as tmp:
                shutil.copyfile(self.path(digest.hash), tmp)
                os.chmod(tmp, 0o755)
                atomicio.publish_file(tmp, dest)
        return dest

    def put_file(self, path: str) -> Digest:
        """Hash a file and store it (hard link when possible, else a copy); return its digest."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        result = Digest(digest.hexdigest(), size)
        if not self.has(result):
            dest = self.path(result.hash)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with atomicio.temp_beside(dest) as tmp:
                shutil.copyfile(path, tmp)  # a copy: the output's mode must not become the store's
                os.chmod(tmp, 0o444)
                atomicio.publish_file(tmp, dest)
        return result

    def put_bytes(self, data: bytes) -> Digest:
        result = Digest(hashlib.sha256(data).hexdigest(), len(data))
        if not self.has(result):
            self._store(result, data)
        return result

    def upload(self, digests: Iterable[Digest]) -> int:
        """Upload present blobs the server lacks; return the bytes sent. Raises :class:`CasError`."""
        blobs = {d.hash: BlobToUpload(d.hash, d.size_bytes, self.path(d.hash)) for d in digests}
        before = self.channel.stats().bytes_uploaded
        try:
            self.channel.upload(sorted(blobs.values(), key=lambda b: b.sha256))
        except RemoteFailure as exc:
            raise CasError(f"uploading outputs: {exc}") from None
        return self.channel.stats().bytes_uploaded - before


__all__ = ["BlobMissing", "CasError", "Corrupt", "ServerChannel", "WorkerCas"]
