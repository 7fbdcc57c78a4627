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
from collections.abc import Callable, Iterator

# pbuild forks its sandboxes from this process and the child unshares a user namespace, which
# the kernel refuses (EINVAL) to a multi-threaded process. With gRPC's fork support on, gRPC
# restarts its threads in every forked child; the children never use gRPC (they exec), so it is
# turned off. gRPC reads the variable when it is first imported, hence before the import.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

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
_GET_CAPABILITIES = _REAPI + "Capabilities/GetCapabilities"
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


def _rpc_failure(exc: grpc.RpcError, what: str, *, writing: bool = False) -> RemoteFailure:
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


class GrpcRemoteCache(RemoteBase):
    """A :class:`pbuild.engine.remote.RemoteCache` speaking REAPI v2 over gRPC."""

    def __init__(self, settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None]) -> None:
        super().__init__(settings, cache_dir=cache_dir, warn=warn)
        parts = urllib.parse.urlsplit(settings.url or "")
        target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'grpcs' else 80)}"
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if parts.scheme == "grpcs":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        # gRPC metadata keys are lowercase by definition.
        self._metadata = tuple((name.lower(), value) for name, value in auth_headers(settings))
        self._instance = settings.instance_name
        self._batch_limit = _DEFAULT_BATCH_LIMIT
        self._max_blob = 0
        self._unary = {
            method: self._channel.unary_unary(method, request_serializer=_identity,
                                              response_deserializer=_identity)
            for method in (_GET_CAPABILITIES, _GET_ACTION_RESULT, _UPDATE_ACTION_RESULT, _FIND_MISSING,
                           _BATCH_UPDATE, _BATCH_READ)
        }
        self._read_stream = self._channel.unary_stream(_BYTESTREAM_READ, request_serializer=_identity,
                                                       response_deserializer=_identity)
        self._write_stream = self._channel.stream_unary(_BYTESTREAM_WRITE, request_serializer=_identity,
                                                        response_deserializer=_identity)

    def _call(self, method: str, request: bytes, what: str, *, writing: bool = False) -> bytes:
        try:
            response: bytes = self._unary[method](request, timeout=self.settings.timeout_s,
                                                  metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, what, writing=writing) from None
        return response

    # --- capabilities ------------------------------------------------------------------------

    def probe(self) -> str | None:
        """Ask the server's capabilities; return why it is unusable, or ``None`` when it is fine."""
        try:
            data = self.attempt(lambda: self._call(_GET_CAPABILITIES, wire.get_capabilities_request(self._instance),
                                                   "GetCapabilities"))
            caps = wire.decode_server_capabilities(data)
        except RemoteFailure as exc:
            return f"cannot reach the server ({exc})"
        except wire.WireError as exc:
            return f"undecodable capabilities ({exc})"
        if caps is None:
            return "the server offers no cache (no cache_capabilities)"
        if wire.DIGEST_FUNCTION_SHA256 not in caps.digest_functions:
            return (f"the server does not support SHA256 digests (it offers digest functions "
                    f"{list(caps.digest_functions)})")
        if caps.max_batch_total_size_bytes:
            self._batch_limit = min(caps.max_batch_total_size_bytes, _DEFAULT_BATCH_LIMIT)
        self._max_blob = caps.max_cas_blob_size_bytes
        if not caps.update_enabled and self.uploading:
            self.disable_uploads("the server does not accept action-cache updates (update_enabled is false)")
        return None

    # --- action cache ---------------------------------------------------------------------------

    def _action(self, key_sha256: str) -> wire.Digest:
        return wire.Digest(key_sha256, ACTION_DIGEST_SIZE)

    def _read_action_result(self, key_sha256: str) -> bytes | None:
        try:
            return self._call(_GET_ACTION_RESULT, wire.get_action_result_request(self._instance,
                                                                                 self._action(key_sha256)),
                              "GetActionResult")
        except Missing:
            return None

    def _write_action_result(self, key_sha256: str, encoded: bytes) -> None:
        self._call(_UPDATE_ACTION_RESULT,
                   wire.update_action_result_request(self._instance, self._action(key_sha256), encoded),
                   "UpdateActionResult", writing=True)

    # --- blobs ----------------------------------------------------------------------------------

    def _fits_batch(self, size: int) -> bool:
        return size + _PER_BLOB_OVERHEAD <= self._batch_limit - _BATCH_OVERHEAD

    def _resource(self, *parts: str) -> str:
        return "/".join(p for p in (self._instance, *parts) if p)

    def _read_blob(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        digest = wire.Digest(sha256, size)
        if self._fits_batch(size):
            data = self._call(_BATCH_READ, wire.batch_read_blobs_request(self._instance, [digest]),
                              "BatchReadBlobs")
            for entry in wire.decode_batch_read_blobs_response(data):
                if entry.digest.hash != sha256:
                    continue
                self._raise_for_status(entry.status, "BatchReadBlobs")
                sink(entry.data)
                return
            raise Missing("BatchReadBlobs: the server returned no entry for the blob")
        try:
            for message in self._read_stream(wire.bytestream_read_request(self._resource("blobs", sha256, str(size))),
                                             timeout=self.settings.timeout_s, metadata=self._metadata):
                sink(wire.decode_bytestream_read_response(message))
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, "ByteStream.Read") from None

    @staticmethod
    def _raise_for_status(status: wire.Status, what: str) -> None:
        if status.code == 0:
            return
        text = f"{what}: status {status.code} {status.message}".strip()
        if status.code == _CODE_NOT_FOUND:
            raise Missing(text)
        if status.code in _TRANSIENT_STATUS:
            raise Transient(text)
        raise RemoteFailure(text)

    def _find_missing(self, blobs: list[BlobToUpload]) -> list[BlobToUpload]:
        missing: list[BlobToUpload] = []
        for start in range(0, len(blobs), _FIND_MISSING_BATCH):
            chunk = blobs[start:start + _FIND_MISSING_BATCH]
            request = wire.find_missing_blobs_request(self._instance, [wire.Digest(b.sha256, b.size) for b in chunk])
            data = self.attempt(lambda r=request: self._call(_FIND_MISSING, r, "FindMissingBlobs"))  # type: ignore[misc]
            absent = {d.hash for d in wire.decode_find_missing_blobs_response(data)}
            missing.extend(b for b in chunk if b.sha256 in absent)
        return missing

    def _upload_blobs(self, blobs: list[BlobToUpload], replace: frozenset[str]) -> None:
        blobs = [b for b in blobs if b.sha256 != EMPTY_SHA256]  # always present by definition
        if self._max_blob:
            too_big = [b for b in blobs if b.size > self._max_blob]
            if too_big:
                raise UploadRefusedBlob(f"blob of {too_big[0].size} bytes exceeds the server's "
                                        f"max_cas_blob_size_bytes ({self._max_blob})")
        # FindMissingBlobs reports a damaged blob as present: those are written regardless.
        absent = {b.sha256 for b in self._find_missing([b for b in blobs if b.sha256 not in replace])}
        missing = [b for b in blobs if b.sha256 in absent or b.sha256 in replace]
        batch: list[BlobToUpload] = []
        batch_size = 0
        for blob in missing:
            if not self._fits_batch(blob.size):
                self.attempt(lambda b=blob: self._stream_upload(b))  # type: ignore[misc]
                continue
            if batch and batch_size + blob.size + _PER_BLOB_OVERHEAD > self._batch_limit - _BATCH_OVERHEAD:
                self.attempt(lambda group=batch: self._batch_upload(group))  # type: ignore[misc]
                batch, batch_size = [], 0
            batch.append(blob)
            batch_size += blob.size + _PER_BLOB_OVERHEAD
        if batch:
            self.attempt(lambda group=batch: self._batch_upload(group))  # type: ignore[misc]

    def _batch_upload(self, blobs: list[BlobToUpload]) -> None:
        entries = []
        for blob in blobs:
            with open(blob.path, "rb") as f:
                entries.append((wire.Digest(blob.sha256, blob.size), f.read()))
        data = self._call(_BATCH_UPDATE, wire.batch_update_blobs_request(self._instance, entries),
                          "BatchUpdateBlobs", writing=True)
        for _digest, status in wire.decode_batch_update_blobs_response(data):
            self._raise_for_status(status, "BatchUpdateBlobs")
        self.count("blobs_uploaded", len(blobs))
        self.count("bytes_uploaded", sum(b.size for b in blobs))

    def _stream_upload(self, blob: BlobToUpload) -> None:
        resource = self._resource("uploads", str(uuid.uuid4()), "blobs", blob.sha256, str(blob.size))

        def requests() -> Iterator[bytes]:
            offset = 0
            with open(blob.path, "rb") as f:
                while True:
                    chunk = f.read(_STREAM_CHUNK)
                    last = offset + len(chunk) >= blob.size
                    yield wire.bytestream_write_request(resource if offset == 0 else "", offset, chunk, last)
                    offset += len(chunk)
                    if last or not chunk:
                        return

        try:
            data = self._write_stream(requests(), timeout=self.settings.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, "ByteStream.Write", writing=True) from None
        committed = wire.decode_bytestream_write_response(data)
        if committed != blob.size:
            raise Transient(f"ByteStream.Write committed {committed} of {blob.size} bytes")
        self.count("blobs_uploaded")
        self.count("bytes_uploaded", blob.size)

    def _close(self) -> None:
        self._channel.close()


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
