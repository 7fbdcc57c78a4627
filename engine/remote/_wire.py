"""The few REAPI v2 and ByteStream messages pbuild exchanges, in protobuf wire format.

Why hand-written and not generated classes: pbuild needs about fifteen messages and only a
handful of their fields. Encoding them directly (varints and length-delimited fields, the whole
protobuf wire format pbuild uses) keeps the remote cache free of generated code, of the ``.proto``
files, and of the protobuf runtime's version constraints. Field numbers are those of the
published ``build.bazel.remote.execution.v2``, ``google.bytestream`` and ``google.rpc`` APIs;
unknown fields are skipped on decoding, as protobuf requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Wire types.
_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5

DIGEST_FUNCTION_SHA256 = 1


class WireError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


# ---------------------------------------------------------------------------------------------
# Primitive encoding


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # negative int32/int64 are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def enc_varint(number: int, value: int) -> bytes:
    """A varint field; proto3 leaves zero values out."""
    return _key(number, _VARINT) + _varint(value) if value else b""


def enc_bool(number: int, value: bool) -> bytes:
    return enc_varint(number, 1 if value else 0)


def enc_bytes(number: int, value: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(value)) + value if value else b""


def enc_str(number: int, value: str) -> bytes:
    return enc_bytes(number, value.encode())


def enc_msg(number: int, value: bytes | None) -> bytes:
    """An embedded message; present even when empty (unlike scalars)."""
    if value is None:
        return b""
    return _key(number, _LEN) + _varint(len(value)) + value


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)``; LEN values are bytes, numbers are ints."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise WireError("truncated length-delimited field")
            yield number, wire_type, bytes(data[pos:pos + length])
            pos += length
        elif wire_type == _I64:
            if pos + 8 > len(data):
                raise WireError("truncated fixed64")
            yield number, wire_type, int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wire_type == _I32:
            if pos + 4 > len(data):
                raise WireError("truncated fixed32")
            yield number, wire_type, int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise WireError("expected a length-delimited field")
    return value


def _as_int(value: int | bytes) -> int:
    if isinstance(value, bytes):
        raise WireError("expected a varint field")
    return value


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class Digest:
    """``build.bazel.remote.execution.v2.Digest``: hash=1 (lowercase hex), size_bytes=2."""

    hash: str
    size_bytes: int

    def encode(self) -> bytes:
        return enc_str(1, self.hash) + enc_varint(2, self.size_bytes)

    @classmethod
    def decode(cls, data: bytes) -> Digest:
        hash_, size = "", 0
        for number, _, value in fields(data):
            if number == 1:
                hash_ = _as_bytes(value).decode()
            elif number == 2:
                size = _as_int(value)
        return cls(hash_, size)


@dataclass(frozen=True)
class OutputFile:
    """``OutputFile``: path=1, digest=2, is_executable=4."""

    path: str
    digest: Digest
    is_executable: bool

    def encode(self) -> bytes:
        return enc_str(1, self.path) + enc_msg(2, self.digest.encode()) + enc_bool(4, self.is_executable)

    @classmethod
    def decode(cls, data: bytes) -> OutputFile:
        path, digest, executable = "", Digest("", 0), False
        for number, _, value in fields(data):
            if number == 1:
                path = _as_bytes(value).decode()
            elif number == 2:
                digest = Digest.decode(_as_bytes(value))
            elif number == 4:
                executable = bool(_as_int(value))
        return cls(path, digest, executable)


@dataclass(frozen=True)
class Timestamp:
    """``google.protobuf.Timestamp``: seconds=1, nanos=2."""

    seconds: int = 0
    nanos: int = 0

    @classmethod
    def of(cls, unix_time: float) -> Timestamp:
        whole = int(unix_time)
        return cls(whole, int((unix_time - whole) * 1e9))

    @property
    def unix_time(self) -> float:
        return self.seconds + self.nanos / 1e9

    def encode(self) -> bytes:
        return enc_varint(1, self.seconds) + enc_varint(2, self.nanos)

    @classmethod
    def decode(cls, data: bytes) -> Timestamp:
        seconds = nanos = 0
        for number, _, value in fields(data):
            if number == 1:
                seconds = _as_int(value)
            elif number == 2:
                nanos = _int32(_as_int(value))
        return cls(seconds, nanos)


# ExecutedActionMetadata's timestamp fields, in field-number order from 2.
TIMESTAMP_FIELDS = ("queued", "worker_start", "worker_completed", "input_fetch_start", "input_fetch_completed",
                    "execution_start", "execution_completed", "output_upload_start", "output_upload_completed")


@dataclass(frozen=True)
class ExecutedActionMetadata:
    """``ExecutedActionMetadata``: worker=1, then the timestamps of :data:`TIMESTAMP_FIELDS` as
    fields 2..10 (queued, worker start/completed, input fetch, execution, output upload)."""

    worker: str = ""
    timestamps: tuple[tuple[str, Timestamp], ...] = ()  # (name from TIMESTAMP_FIELDS, when)

    def encode(self) -> bytes:
        body = enc_str(1, self.worker)
        for name, stamp in self.timestamps:
            body += enc_msg(2 + TIMESTAMP_FIELDS.index(name), stamp.encode())
        return body

    @classmethod
    def decode(cls, data: bytes) -> ExecutedActionMetadata:
        worker = ""
        stamps: list[tuple[str, Timestamp]] = []
        for number, _, value in fields(data):
            if number == 1:
                worker = _as_bytes(value).decode(errors="replace")
            elif 2 <= number < 2 + len(TIMESTAMP_FIELDS):
                stamps.append((TIMESTAMP_FIELDS[number - 2], Timestamp.decode(_as_bytes(value))))
        return cls(worker, tuple(stamps))

    def seconds_between(self, start: str, end: str) -> float | None:
        """The time from timestamp ``start`` to ``end`` (names of :data:`TIMESTAMP_FIELDS`), if both are set."""
        found = dict(self.timestamps)
        if start not in found or end not in found:
            return None
        return found[end].unix_time - found[start].unix_time


@dataclass(frozen=True)
class OutputDirectory:
    """``OutputDirectory``: path=1, tree_digest=3 (a ``Tree`` message in the CAS),
    is_topologically_sorted=4."""

    path: str
    tree_digest: Digest

    def encode(self) -> bytes:
        return enc_str(1, self.path) + enc_msg(3, self.tree_digest.encode())

    @classmethod
    def decode(cls, data: bytes) -> OutputDirectory:
        path, digest = "", Digest("", 0)
        for number, _, value in fields(data):
            if number == 1:
                path = _as_bytes(value).decode()
            elif number == 3:
                digest = Digest.decode(_as_bytes(value))
        return cls(path, digest)


@dataclass(frozen=True)
class ActionResult:
    """``ActionResult``: output_files=2, output_directories=3, exit_code=4, stdout_digest=6,
    stderr_digest=8, execution_metadata=9 (plus the symlink fields 10-12, which pbuild does not
    produce but must not silently ignore when another client wrote them)."""

    output_files: tuple[OutputFile, ...] = ()
    exit_code: int = 0
    stdout_digest: Digest | None = None
    stderr_digest: Digest | None = None
    has_unsupported_outputs: bool = False
    output_directories: tuple[OutputDirectory, ...] = ()
    execution_metadata: ExecutedActionMetadata | None = None

    def encode(self) -> bytes:
        body = b"".join(enc_msg(2, f.encode()) for f in self.output_files)
        body += b"".join(enc_msg(3, d.encode()) for d in self.output_directories)
        body += enc_varint(4, self.exit_code)
        if self.stdout_digest is not None:
            body += enc_msg(6, self.stdout_digest.encode())
        if self.stderr_digest is not None:
            body += enc_msg(8, self.stderr_digest.encode())
        if self.execution_metadata is not None:
            body += enc_msg(9, self.execution_metadata.encode())
        return body

    @classmethod
    def decode(cls, data: bytes) -> ActionResult:
        files: list[OutputFile] = []
        directories: list[OutputDirectory] = []
        exit_code = 0
        stdout = stderr = None
        metadata = None
        unsupported = False
        for number, _, value in fields(data):
            if number == 2:
                files.append(OutputFile.decode(_as_bytes(value)))
            elif number == 3:
                directories.append(OutputDirectory.decode(_as_bytes(value)))
            elif number == 4:
                exit_code = _int32(_as_int(value))
            elif number == 6:
                stdout = Digest.decode(_as_bytes(value))
            elif number == 8:
                stderr = Digest.decode(_as_bytes(value))
            elif number == 9:
                metadata = ExecutedActionMetadata.decode(_as_bytes(value))
            elif number in (10, 11, 12):  # symlinks: not produced by pbuild
                unsupported = True
        return cls(tuple(files), exit_code, stdout, stderr, unsupported, tuple(directories), metadata)


@dataclass(frozen=True)
class Status:
    """``google.rpc.Status``: code=1, message=2."""

    code: int = 0
    message: str = ""

    @classmethod
    def decode(cls, data: bytes) -> Status:
        code, message = 0, ""
        for number, _, value in fields(data):
            if number == 1:
                code = _int32(_as_int(value))
            elif number == 2:
                message = _as_bytes(value).decode(errors="replace")
        return cls(code, message)


# Requests and responses of the services (field numbers in each encoder's docstring).


def get_capabilities_request(instance_name: str) -> bytes:
    """GetCapabilitiesRequest: instance_name=1."""
    return enc_str(1, instance_name)


@dataclass(frozen=True)
class CacheCapabilities:
    digest_functions: tuple[int, ...] = ()
    update_enabled: bool = False
    max_batch_total_size_bytes: int = 0
    max_cas_blob_size_bytes: int = 0


def decode_server_capabilities(data: bytes) -> CacheCapabilities | None:
    """ServerCapabilities.cache_capabilities=1 -> CacheCapabilities: digest_functions=1
    (repeated enum, packed or not), action_cache_update_capabilities=2 (update_enabled=1),
    max_batch_total_size_bytes=4, max_cas_blob_size_bytes=8."""
    cache: bytes | None = None
    for number, _, value in fields(data):
        if number == 1:
            cache = _as_bytes(value)
    if cache is None:
        return None
    functions: list[int] = []
    update_enabled = False
    max_batch = max_blob = 0
    for number, wire_type, value in fields(cache):
        if number == 1:
            if wire_type == _LEN:
                packed = _as_bytes(value)
                pos = 0
                while pos < len(packed):
                    item, pos = _read_varint(packed, pos)
                    functions.append(item)
            else:
                functions.append(_as_int(value))
        elif number == 2:
            for sub, _, flag in fields(_as_bytes(value)):
                if sub == 1:
                    update_enabled = bool(_as_int(flag))
        elif number == 4:
            max_batch = _as_int(value)
        elif number == 8:
            max_blob = _as_int(value)
    return CacheCapabilities(tuple(functions), update_enabled, max_batch, max_blob)


def get_action_result_request(instance_name: str, action: Digest) -> bytes:
    """GetActionResultRequest: instance_name=1, action_digest=2, digest_function=6."""
    return enc_str(1, instance_name) + enc_msg(2, action.encode()) + enc_varint(6, DIGEST_FUNCTION_SHA256)


def update_action_result_request(instance_name: str, action: Digest, encoded_result: bytes) -> bytes:
    """UpdateActionResultRequest: instance_name=1, action_digest=2, action_result=3 (an encoded
    ActionResult), digest_function=5."""
    return (enc_str(1, instance_name) + enc_msg(2, action.encode()) + enc_msg(3, encoded_result)
            + enc_varint(5, DIGEST_FUNCTION_SHA256))


def find_missing_blobs_request(instance_name: str, digests: list[Digest]) -> bytes:
    """FindMissingBlobsRequest: instance_name=1, blob_digests=2, digest_function=3."""
    return (enc_str(1, instance_name) + b"".join(enc_msg(2, d.encode()) for d in digests)
            + enc_varint(3, DIGEST_FUNCTION_SHA256))


def decode_find_missing_blobs_response(data: bytes) -> list[Digest]:
    """FindMissingBlobsResponse: missing_blob_digests=2."""
    return [Digest.decode(_as_bytes(v)) for n, _, v in fields(data) if n == 2]


def batch_update_blobs_request(instance_name: str, blobs: list[tuple[Digest, bytes]]) -> bytes:
    """BatchUpdateBlobsRequest: instance_name=1, requests=2 (digest=1, data=2),
    digest_function=5."""
    body = enc_str(1, instance_name)
    for digest, data in blobs:
        body += enc_msg(2, enc_msg(1, digest.encode()) + enc_bytes(2, data))
    return body + enc_varint(5, DIGEST_FUNCTION_SHA256)


def decode_batch_update_blobs_response(data: bytes) -> list[tuple[Digest, Status]]:
    """BatchUpdateBlobsResponse: responses=1 (digest=1, status=2)."""
    out = []
    for number, _, value in fields(data):
        if number != 1:
            continue
        digest, status = Digest("", 0), Status()
        for sub, _, item in fields(_as_bytes(value)):
            if sub == 1:
                digest = Digest.decode(_as_bytes(item))
            elif sub == 2:
                status = Status.decode(_as_bytes(item))
        out.append((digest, status))
    return out


def batch_read_blobs_request(instance_name: str, digests: list[Digest]) -> bytes:
    """BatchReadBlobsRequest: instance_name=1, digests=2, digest_function=4."""
    return (enc_str(1, instance_name) + b"".join(enc_msg(2, d.encode()) for d in digests)
            + enc_varint(4, DIGEST_FUNCTION_SHA256))


@dataclass(frozen=True)
class ReadBlob:
    digest: Digest
    data: bytes
    status: Status = field(default_factory=Status)


def decode_batch_read_blobs_response(data: bytes) -> list[ReadBlob]:
    """BatchReadBlobsResponse: responses=1 (digest=1, data=2, status=3)."""
    out = []
    for number, _, value in fields(data):
        if number != 1:
            continue
        digest, blob, status = Digest("", 0), b"", Status()
        for sub, _, item in fields(_as_bytes(value)):
            if sub == 1:
                digest = Digest.decode(_as_bytes(item))
            elif sub == 2:
                blob = _as_bytes(item)
            elif sub == 3:
                status = Status.decode(_as_bytes(item))
        out.append(ReadBlob(digest, blob, status))
    return out


def bytestream_read_request(resource_name: str, offset: int = 0) -> bytes:
    """google.bytestream.ReadRequest: resource_name=1, read_offset=2, read_limit=3."""
    return enc_str(1, resource_name) + enc_varint(2, offset)


def decode_bytestream_read_response(data: bytes) -> bytes:
    """ReadResponse: data=10."""
    for number, _, value in fields(data):
        if number == 10:
            return _as_bytes(value)
    return b""


def bytestream_write_request(resource_name: str, offset: int, data: bytes, finish: bool) -> bytes:
    """WriteRequest: resource_name=1 (first message only is required), write_offset=2,
    finish_write=3, data=10."""
    return enc_str(1, resource_name) + enc_varint(2, offset) + enc_bool(3, finish) + enc_bytes(10, data)


def decode_bytestream_write_response(data: bytes) -> int:
    """WriteResponse: committed_size=1."""
    for number, _, value in fields(data):
        if number == 1:
            return _as_int(value)
    return 0
