"""REAPI v2 remote cache over gRPC: Capabilities, ActionCache, ContentAddressableStorage and
ByteStream, called as generic methods with the hand-written messages of ``_wire``.

Small blobs travel in batches (BatchUpdateBlobs/BatchReadBlobs) up to the server's
``max_batch_total_size_bytes``; larger ones are streamed with ByteStream Write/Read in 1 MiB
chunks. Before uploading, FindMissingBlobs asks which blobs the server lacks.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

# pbuild forks its sandboxes from this process and the child unshares a user namespace, which
# the kernel refuses (EINVAL) to a multi-threaded process. With gRPC's fork support on, gRPC
# restarts its threads in every forked child; the children never use gRPC (they exec), so it is
# turned off. gRPC reads the variable when it is first imported, hence before the import.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
# gRPC's core logs connection events (a server's GOAWAY on restart) to stderr at INFO unless told
# otherwise; pbuild says what matters itself, in one line.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from pbuild.engine.remote import RemoteSettings
from pbuild.engine.remote import _wire as wire
from pbuild.engine.remote._base import (
    EMPTY_SHA256,
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

_REAPI = "/build.bazel.remote.execution.v2."
GET_CAPABILITIES = _REAPI + "Capabilities/GetCapabilities"
_GET_ACTION_RESULT = _REAPI + "ActionCache/GetActionResult"
_UPDATE_ACTION_RESULT = _REAPI + "ActionCache/UpdateActionResult"
_FIND_MISSING = _REAPI + "ContentAddressableStorage/FindMissingBlobs"
_BATCH_UPDATE = _REAPI + "ContentAddressableStorage/BatchUpdateBlobs"
_BATCH_READ = _REAPI + "ContentAddressableStorage/BatchReadBlobs"
_BYTESTREAM_READ = "/google.bytestream.ByteStream/Read"
_BYTESTREAM_WRITE = "/google.bytestream.ByteStream/Write"

# gRPC's default message limit; also the batch limit when the server states none.
_DEFAULT_BATCH_LIMIT = 4 * 1024 * 1024
_BATCH_OVERHEAD = 16 * 1024  # room for the request's own fields
_PER_BLOB_OVERHEAD = 128  # a digest and the field keys of one entry
_STREAM_CHUNK = 1024 * 1024
_FIND_MISSING_BATCH = 4096  # digests per FindMissingBlobs request (~100 bytes each)
# REAPI identifies an action by the digest of its Action message. pbuild sends the sha256 of
# its own canonical action key instead; the size part of that digest carries no information,
# so it is fixed to keep the key stable between clients.
ACTION_DIGEST_SIZE = 0

_TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
# google.rpc.Code values seen in per-blob statuses of batch responses.
_CODE_NOT_FOUND = 5
_TRANSIENT_STATUS = {1, 2, 8, 10, 13, 14}


def _identity(data: bytes) -> bytes:
    return data


def rpc_failure(exc: grpc.RpcError, what: str, *, writing: bool = False) -> RemoteFailure:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    text = f"{what}: {code.name} {details or ''}".strip()
    if code == grpc.StatusCode.NOT_FOUND:
        return Missing(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimedOut(text)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Refused(f"credentials refused ({text})")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return UploadRefused(text) if writing else Refused(f"access denied ({text})")
    if code in _TRANSIENT_CODES:
        return Transient(text)
    return RemoteFailure(text)


class ReapiChannel:
    """A gRPC channel to one REAPI endpoint and the CAS operations every client of it needs:
    plain calls, FindMissingBlobs, uploads (batched, or streamed through ByteStream when large)
    and reads. Shared by the remote cache and the remote executor; retries and counters are the
    owner's (``attempt``, ``count``)."""

    def __init__(self, url: str, settings: RemoteSettings, *, attempt: Callable[[Callable[[], Any]], Any],
                 count: Callable[[str, int], None]) -> None:
        parts = urllib.parse.urlsplit(url)
        target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'grpcs' else 80)}"
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if parts.scheme == "grpcs":
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        # gRPC metadata keys are lowercase by definition; credentials in this URL's userinfo count.
        self.metadata = tuple((name.lower(), value) for name, value in auth_headers(replace(settings, url=url)))
        self.instance = settings.instance_name
        self.timeout_s = settings.timeout_s
        self.batch_limit = _DEFAULT_BATCH_LIMIT
        self.max_blob = 0
        self._attempt = attempt
        self._count = count
        self._unary: dict[str, Callable[..., bytes]] = {}
        self._read_stream = self.channel.unary_stream(_BYTESTREAM_READ, request_serializer=_identity,
                                                      response_deserializer=_identity)
        self._write_stream = self.channel.stream_unary(_BYTESTREAM_WRITE, request_serializer=_identity,
                                                       response_deserializer=_identity)

    def call(self, method: str, request: bytes, what: str, *, writing: bool = False) -> bytes:
        """One unary call (``method`` is its full name); a :class:`RemoteFailure` on error."""
        stub = self._unary.get(method)
        if stub is None:
            stub = self._unary[method] = self.channel.unary_unary(method, request_serializer=_identity,
                                                                  response_deserializer=_identity)
        try:
            response: bytes = stub(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise rpc_failure(exc, what, writing=writing) from None
        return response

    def capabilities(self) -> bytes:
        """The encoded ServerCapabilities (retried when transient)."""
        return cast(bytes, self._attempt(lambda: self.call(GET_CAPABILITIES,
                                                           wire.get_capabilities_request(self.instance),
                                                           "GetCapabilities")))

    def use_limits(self, caps: wire.CacheCapabilities) -> None:
        """Keep batches and blobs within what the server states."""
        if caps.max_batch_total_size_bytes:
            self.batch_limit = min(caps.max_batch_total_size_bytes, _DEFAULT_BATCH_LIMIT)
        self.max_blob = caps.max_cas_blob_size_bytes

    def fits_batch(self, size: int) -> bool:
        return size + _PER_BLOB_OVERHEAD <= self.batch_limit - _BATCH_OVERHEAD

    def resource(self, *parts: str) -> str:
        return "/".join(p for p in (self.instance, *parts) if p)

    @staticmethod
    def raise_for_status(status: wire.Status, what: str) -> None:
        if status.code == 0:
            return
        text = f"{what}: status {status.code} {status.message}".strip()
        if status.code == _CODE_NOT_FOUND:
            raise Missing(text)
        if status.code in _TRANSIENT_STATUS:
            raise Transient(text)
        raise RemoteFailure(text)

    def read_blob(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        """Stream a blob's bytes into ``sink`` (unverified: the caller checks them)."""
        digest = wire.Digest(sha256, size)
        if self.fits_batch(size):
            data = self.call(_BATCH_READ, wire.batch_read_blobs_request(self.instance, [digest]), "BatchReadBlobs")
            for entry in wire.decode_batch_read_blobs_response(data):
                if entry.digest.hash != sha256:
                    continue
                self.raise_for_status(entry.status, "BatchReadBlobs")
                sink(entry.data)
                return
            raise Missing("BatchReadBlobs: the server returned no entry for the blob")
        try:
            for message in self._read_stream(wire.bytestream_read_request(self.resource("blobs", sha256, str(size))),
                                             timeout=self.timeout_s, metadata=self.metadata):
                sink(wire.decode_bytestream_read_response(message))
        except grpc.RpcError as exc:
            raise rpc_failure(exc, "ByteStream.Read") from None

    def find_missing(self, blobs: Sequence[BlobToUpload]) -> list[BlobToUpload]:
        """Those of ``blobs`` the server lacks (asked in chunks, each retried when transient)."""
        missing: list[BlobToUpload] = []
        for start in range(0, len(blobs), _FIND_MISSING_BATCH):
            chunk = blobs[start:start + _FIND_MISSING_BATCH]
            request = wire.find_missing_blobs_request(self.instance, [wire.Digest(b.sha256, b.size) for b in chunk])
            data = self._attempt(lambda r=request: self.call(_FIND_MISSING, r, "FindMissingBlobs"))  # type: ignore[misc]
            absent = {d.hash for d in wire.decode_find_missing_blobs_response(data)}
            missing.extend(b for b in chunk if b.sha256 in absent)
        return missing

    def upload(self, blobs: Sequence[BlobToUpload]) -> None:
        """Write ``blobs`` (without asking first): batches up to the server's limit, ByteStream
        for those too large for one."""
        batch: list[BlobToUpload] = []
        batch_size = 0
        for blob in blobs:
            if not self.fits_batch(blob.size):
                self._attempt(lambda b=blob: self._stream_upload(b))  # type: ignore[misc]
                continue
            if batch and batch_size + blob.size + _PER_BLOB_OVERHEAD > self.batch_limit - _BATCH_OVERHEAD:
                self._attempt(lambda group=batch: self._batch_upload(group))  # type: ignore[misc]
                batch, batch_size = [], 0
            batch.append(blob)
            batch_size += blob.size + _PER_BLOB_OVERHEAD
        if batch:
            self._attempt(lambda group=batch: self._batch_upload(group))  # type: ignore[misc]

    @staticmethod
    def _content(blob: BlobToUpload) -> bytes:
        if blob.data is not None:
            return blob.data
        with open(blob.path, "rb") as f:
            return f.read()

    def _batch_upload(self, blobs: list[BlobToUpload]) -> None:
        entries = [(wire.Digest(blob.sha256, blob.size), self._content(blob)) for blob in blobs]
        data = self.call(_BATCH_UPDATE, wire.batch_update_blobs_request(self.instance, entries),
                         "BatchUpdateBlobs", writing=True)
        for _digest, status in wire.decode_batch_update_blobs_response(data):
            self.raise_for_status(status, "BatchUpdateBlobs")
        self._count("blobs_uploaded", len(blobs))
        self._count("bytes_uploaded", sum(b.size for b in blobs))

    def _stream_upload(self, blob: BlobToUpload) -> None:
        resource = self.resource("uploads", str(uuid.uuid4()), "blobs", blob.sha256, str(blob.size))

        def chunks() -> Iterator[bytes]:
            if blob.data is not None:
                for start in range(0, max(len(blob.data), 1), _STREAM_CHUNK):
                    yield blob.data[start:start + _STREAM_CHUNK]
                return
            with open(blob.path, "rb") as f:
                while chunk := f.read(_STREAM_CHUNK):
                    yield chunk

        def requests() -> Iterator[bytes]:
            offset = 0
            for chunk in chunks():
                last = offset + len(chunk) >= blob.size
                yield wire.bytestream_write_request(resource if offset == 0 else "", offset, chunk, last)
                offset += len(chunk)
                if last:
                    return
            # A file that shrank since it was hashed: the server sees a short write and refuses it.
            yield wire.bytestream_write_request(resource if offset == 0 else "", offset, b"", True)

        try:
            data = self._write_stream(requests(), timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise rpc_failure(exc, "ByteStream.Write", writing=True) from None
        committed = wire.decode_bytestream_write_response(data)
        if committed != blob.size:
            raise Transient(f"ByteStream.Write committed {committed} of {blob.size} bytes")
        self._count("blobs_uploaded", 1)
        self._count("bytes_uploaded", blob.size)

    def close(self) -> None:
        self.channel.close()


class GrpcRemoteCache(RemoteBase):
    """A :class:`pbuild.engine.remote.RemoteCache` speaking REAPI v2 over gRPC."""

    def __init__(self, settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]) -> None:
        super().__init__(settings, cache_dir=cache_dir, warn=warn)
        self.rpc = ReapiChannel(settings.url or "", settings, attempt=self.attempt, count=self.count)
        self._instance = settings.instance_name

    # --- capabilities ------------------------------------------------------------------------

    def probe(self) -> str | None:
        """Ask the server's capabilities; return why it is unusable, or ``None`` when it is fine."""
        try:
            caps = wire.decode_server_capabilities(self.rpc.capabilities())
        except RemoteFailure as exc:
            return f"cannot reach the server ({exc})"
        except wire.WireError as exc:
            return f"undecodable capabilities ({exc})"
        if caps is None:
            return "the server offers no cache (no cache_capabilities)"
        if wire.DIGEST_FUNCTION_SHA256 not in caps.digest_functions:
            return (f"the server does not support SHA256 digests (it offers digest functions "
                    f"{list(caps.digest_functions)})")
        self.rpc.use_limits(caps)
        if not caps.update_enabled and self.uploading:
            self.disable_uploads("the server does not accept action-cache updates (update_enabled is false)")
        return None

    # --- action cache ---------------------------------------------------------------------------

    def _action(self, key_sha256: str) -> wire.Digest:
        return wire.Digest(key_sha256, ACTION_DIGEST_SIZE)

    def _read_action_result(self, key_sha256: str) -> bytes | None:
        try:
            return self.rpc.call(_GET_ACTION_RESULT, wire.get_action_result_request(self._instance,
                                                                                    self._action(key_sha256)),
                                 "GetActionResult")
        except Missing:
            return None

    def _write_action_result(self, key_sha256: str, encoded: bytes) -> None:
        self.rpc.call(_UPDATE_ACTION_RESULT,
                      wire.update_action_result_request(self._instance, self._action(key_sha256), encoded),
                      "UpdateActionResult", writing=True)

    # --- blobs ----------------------------------------------------------------------------------

    def _read_blob(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        self.rpc.read_blob(sha256, size, sink)

    def _upload_blobs(self, blobs: list[BlobToUpload], replace: frozenset[str]) -> None:
        blobs = [b for b in blobs if b.sha256 != EMPTY_SHA256]  # always present by definition
        if self.rpc.max_blob:
            too_big = [b for b in blobs if b.size > self.rpc.max_blob]
            if too_big:
                raise UploadRefusedBlob(f"blob of {too_big[0].size} bytes exceeds the server's "
                                        f"max_cas_blob_size_bytes ({self.rpc.max_blob})")
        # FindMissingBlobs reports a damaged blob as present: those are written regardless.
        absent = {b.sha256 for b in self.rpc.find_missing([b for b in blobs if b.sha256 not in replace])}
        self.rpc.upload([b for b in blobs if b.sha256 in absent or b.sha256 in replace])

    def _close(self) -> None:
        self.rpc.close()


class UploadRefusedBlob(RemoteFailure):
    """One blob is larger than the server accepts; this action's result is not uploaded."""


def open_grpc_remote(settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]
                     ) -> GrpcRemoteCache | None:
    """Connect and check capabilities; ``None`` (with one warning) when the server is unusable."""
    cache = GrpcRemoteCache(settings, cache_dir=cache_dir, warn=warn)
    problem = cache.probe()
    if problem is not None:
        warn(f"remote cache {cache.name}: {problem}; building without the remote cache")
        cache.close()
        return None
    return cache
