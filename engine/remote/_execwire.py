"""The REAPI v2 execution messages, in protobuf wire format: what a client sends to run an action
(Command, Action, the input root's Directory messages, ExecuteRequest), what comes back
(google.longrunning.Operation carrying ExecuteOperationMetadata and ExecuteResponse) and what a
worker uploads for an output directory (Tree).

Hand-written for the reasons :mod:`pbuild.engine.remote._wire` gives, on its primitives. Field
numbers are those of the published ``build.bazel.remote.execution.v2``, ``google.longrunning``,
``google.rpc`` and ``google.protobuf`` APIs; unknown fields are skipped. Encoders write fields in
field-number order and repeated fields in the order given, so a message's bytes (and hence its
digest) depend only on its content: the same action always has the same Action digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pbuild.engine.remote._wire import (
    DIGEST_FUNCTION_SHA256,
    ActionResult,
    Digest,
    Status,
    WireError,
    _as_bytes,
    _as_int,
    _int32,
    _read_varint,
    enc_bool,
    enc_bytes,
    enc_msg,
    enc_str,
    enc_varint,
    fields,
)

__all__ = [
    "STAGE_COMPLETED", "STAGE_EXECUTING", "STAGE_QUEUED", "Action", "AnyMessage", "Command", "Directory",
    "DirectoryNode", "ExecuteResponse", "ExecutionCapabilities", "FileNode", "Operation", "RichStatus",
    "SymlinkNode", "Tree", "WireError", "check_name", "decode_pair", "digest_of", "encode_pairs",
    "execute_request", "text_field", "wait_execution_request",
]

_TYPE_PREFIX = "type.googleapis.com/"
TYPE_ACTION = _TYPE_PREFIX + "build.bazel.remote.execution.v2.Action"
TYPE_ACTION_RESULT = _TYPE_PREFIX + "build.bazel.remote.execution.v2.ActionResult"
TYPE_EXECUTE_RESPONSE = _TYPE_PREFIX + "build.bazel.remote.execution.v2.ExecuteResponse"
TYPE_EXECUTE_METADATA = _TYPE_PREFIX + "build.bazel.remote.execution.v2.ExecuteOperationMetadata"
TYPE_PRECONDITION_FAILURE = _TYPE_PREFIX + "google.rpc.PreconditionFailure"

# ExecutionStage.Value
STAGE_UNKNOWN, STAGE_CACHE_CHECK, STAGE_QUEUED, STAGE_EXECUTING, STAGE_COMPLETED = range(5)

CODE_FAILED_PRECONDITION = 9
CODE_DEADLINE_EXCEEDED = 4


def digest_of(data: bytes) -> Digest:
    """The sha256 digest of an encoded message (or any blob)."""
    return Digest(hashlib.sha256(data).hexdigest(), len(data))


def text_field(value: int | bytes) -> str:
    """A string field's value; :class:`WireError` when it is not length-delimited UTF-8."""
    try:
        return _as_bytes(value).decode()
    except UnicodeDecodeError:
        raise WireError("a string field is not UTF-8") from None



def encode_pairs(number: int, pairs: tuple[tuple[str, str], ...]) -> bytes:
    """Field ``number`` repeated, each a ``{1: first, 2: second}`` message of two strings (a
    Platform.Property, a Command.EnvironmentVariable, the Bots API's properties and configs)."""
    return b"".join(enc_msg(number, enc_str(1, first) + enc_str(2, second)) for first, second in pairs)


def decode_pair(data: bytes) -> tuple[str, str]:
    """One ``{1: first, 2: second}`` message of two strings (see :func:`encode_pairs`)."""
    first = second = ""
    for number, _, value in fields(data):
        if number == 1:
            first = text_field(value)
        elif number == 2:
            second = text_field(value)
    return first, second


def _properties(data: bytes) -> tuple[tuple[str, str], ...]:
    """``Platform``: properties=1 (Property: name=1, value=2)."""
    return tuple(decode_pair(_as_bytes(value)) for number, _, value in fields(data) if number == 1)


def _platform(properties: tuple[tuple[str, str], ...]) -> bytes:
    return encode_pairs(1, properties)


def _duration(seconds: float) -> bytes:
    """``google.protobuf.Duration``: seconds=1, nanos=2."""
    whole = int(seconds)
    return enc_varint(1, whole) + enc_varint(2, int(round((seconds - whole) * 1e9)))


def _duration_seconds(data: bytes) -> float:
    seconds = nanos = 0
    for number, _, value in fields(data):
        if number == 1:
            seconds = _as_int(value)
        elif number == 2:
            nanos = _int32(_as_int(value))
    return seconds + nanos / 1e9


# ---------------------------------------------------------------------------------------------
# What is executed


@dataclass(frozen=True)
class Command:
    """``Command``: arguments=1, environment_variables=2 (name=1, value=2), output_files=3,
    output_directories=4, platform=5, working_directory=6, output_paths=7.

    Both the v2.1 ``output_paths`` and the older split fields are written (servers of either age
    understand one of them); a decoder prefers ``output_paths`` when present."""

    arguments: tuple[str, ...]
    environment: tuple[tuple[str, str], ...] = ()  # sorted by name
    output_files: tuple[str, ...] = ()
    output_directories: tuple[str, ...] = ()
    platform: tuple[tuple[str, str], ...] = ()
    working_directory: str = ""
    output_paths: tuple[str, ...] = ()

    def encode(self) -> bytes:
        # A repeated string keeps its empty items (``bash -c CMD ""``): enc_str would drop them.
        body = b"".join(enc_msg(1, a.encode()) for a in self.arguments)
        body += encode_pairs(2, self.environment)
        body += b"".join(enc_str(3, p) for p in self.output_files)
        body += b"".join(enc_str(4, p) for p in self.output_directories)
        if self.platform:
            body += enc_msg(5, _platform(self.platform))
        body += enc_str(6, self.working_directory)
        body += b"".join(enc_str(7, p) for p in self.output_paths)
        return body

    @classmethod
    def decode(cls, data: bytes) -> Command:
        args: list[str] = []
        env: list[tuple[str, str]] = []
        files: list[str] = []
        dirs: list[str] = []
        paths: list[str] = []
        platform: tuple[tuple[str, str], ...] = ()
        workdir = ""
        for number, _, value in fields(data):
            if number == 1:
                args.append(text_field(value))
            elif number == 2:
                env.append(decode_pair(_as_bytes(value)))
            elif number == 3:
                files.append(text_field(value))
            elif number == 4:
                dirs.append(text_field(value))
            elif number == 5:
                platform = _properties(_as_bytes(value))
            elif number == 6:
                workdir = text_field(value)
            elif number == 7:
                paths.append(text_field(value))
        return cls(tuple(args), tuple(env), tuple(files), tuple(dirs), platform, workdir, tuple(paths))


@dataclass(frozen=True)
class Action:
    """``Action``: command_digest=1, input_root_digest=2, timeout=6, do_not_cache=7, salt=9,
    platform=10."""

    command_digest: Digest
    input_root_digest: Digest
    timeout_s: float | None = None
    do_not_cache: bool = False
    salt: bytes = b""
    platform: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        body = enc_msg(1, self.command_digest.encode()) + enc_msg(2, self.input_root_digest.encode())
        if self.timeout_s is not None:
            body += enc_msg(6, _duration(self.timeout_s))
        body += enc_bool(7, self.do_not_cache) + enc_bytes(9, self.salt)
        if self.platform:
            body += enc_msg(10, _platform(self.platform))
        return body

    @classmethod
    def decode(cls, data: bytes) -> Action:
        command = root = Digest("", 0)
        timeout: float | None = None
        do_not_cache = False
        salt = b""
        platform: tuple[tuple[str, str], ...] = ()
        for number, _, value in fields(data):
            if number == 1:
                command = Digest.decode(_as_bytes(value))
            elif number == 2:
                root = Digest.decode(_as_bytes(value))
            elif number == 6:
                timeout = _duration_seconds(_as_bytes(value))
            elif number == 7:
                do_not_cache = bool(_as_int(value))
            elif number == 9:
                salt = _as_bytes(value)
            elif number == 10:
                platform = _properties(_as_bytes(value))
        return cls(command, root, timeout, do_not_cache, salt, platform)


# ---------------------------------------------------------------------------------------------
# Directories


@dataclass(frozen=True)
class FileNode:
    """``FileNode``: name=1, digest=2, is_executable=4."""

    name: str
    digest: Digest
    is_executable: bool = False

    def encode(self) -> bytes:
        return enc_str(1, self.name) + enc_msg(2, self.digest.encode()) + enc_bool(4, self.is_executable)


@dataclass(frozen=True)
class DirectoryNode:
    """``DirectoryNode``: name=1, digest=2 (of the child's encoded ``Directory``)."""

    name: str
    digest: Digest

    def encode(self) -> bytes:
        return enc_str(1, self.name) + enc_msg(2, self.digest.encode())


@dataclass(frozen=True)
class SymlinkNode:
    """``SymlinkNode``: name=1, target=2."""

    name: str
    target: str

    def encode(self) -> bytes:
        return enc_str(1, self.name) + enc_str(2, self.target)


def _node_parts(data: bytes) -> tuple[str, Digest | None, bool]:
    """A FileNode's or DirectoryNode's name, digest and (files only) executable bit."""
    name, digest, executable = "", None, False
    for number, _, value in fields(data):
        if number == 1:
            name = text_field(value)
        elif number == 2:
            digest = Digest.decode(_as_bytes(value))
        elif number == 4:
            executable = bool(_as_int(value))
    return name, digest, executable


@dataclass(frozen=True)
class Directory:
    """``Directory``: files=1, directories=2, symlinks=3 (node_properties=5 is skipped).

    REAPI requires each list sorted by name; :meth:`encode` sorts, and a worker checks the names
    of what it receives (see :func:`check_name`) rather than trusting them."""

    files: tuple[FileNode, ...] = ()
    directories: tuple[DirectoryNode, ...] = ()
    symlinks: tuple[SymlinkNode, ...] = ()

    def encode(self) -> bytes:
        body = b"".join(enc_msg(1, f.encode()) for f in sorted(self.files, key=lambda n: n.name))
        body += b"".join(enc_msg(2, d.encode()) for d in sorted(self.directories, key=lambda n: n.name))
        body += b"".join(enc_msg(3, s.encode()) for s in sorted(self.symlinks, key=lambda n: n.name))
        return body

    @classmethod
    def decode(cls, data: bytes) -> Directory:
        files: list[FileNode] = []
        dirs: list[DirectoryNode] = []
        links: list[SymlinkNode] = []
        for number, _, value in fields(data):
            if number not in (1, 2, 3):
                continue
            raw = _as_bytes(value)
            if number == 3:
                links.append(SymlinkNode(*decode_pair(raw)))
                continue
            name, digest, executable = _node_parts(raw)
            if digest is None:
                raise WireError(f"directory entry {name!r} has no digest")
            if number == 1:
                files.append(FileNode(name, digest, executable))
            else:
                dirs.append(DirectoryNode(name, digest))
        return cls(tuple(files), tuple(dirs), tuple(links))


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be one entry of a Directory (``None`` when it can): REAPI names are
    single path components; anything else could escape the root it is laid out in."""
    if not name:
        return "an empty name"
    if name in (".", ".."):
        return f"the name {name!r}"
    if "/" in name or "\0" in name:
        return f"the name {name!r} (names are single path components)"
    return None


@dataclass(frozen=True)
class Tree:
    """``Tree``: root=1, children=2 (every Directory below the root, each once)."""

    root: Directory
    children: tuple[Directory, ...] = ()

    def encode(self) -> bytes:
        return enc_msg(1, self.root.encode()) + b"".join(enc_msg(2, c.encode()) for c in self.children)

    @classmethod
    def decode(cls, data: bytes) -> Tree:
        root: Directory | None = None
        children: list[Directory] = []
        for number, _, value in fields(data):
            if number == 1:
                root = Directory.decode(_as_bytes(value))
            elif number == 2:
                children.append(Directory.decode(_as_bytes(value)))
        if root is None:
            raise WireError("a Tree without its root directory")
        return cls(root, tuple(children))


# ---------------------------------------------------------------------------------------------
# The Execution service


def execute_request(instance_name: str, action: Digest, *, skip_cache_lookup: bool = False,
                    priority: int = 0) -> bytes:
    """ExecuteRequest: instance_name=1, skip_cache_lookup=3, action_digest=6, execution_policy=7
    (priority=1), digest_function=9."""
    body = enc_str(1, instance_name) + enc_bool(3, skip_cache_lookup) + enc_msg(6, action.encode())
    if priority:
        body += enc_msg(7, enc_varint(1, priority))
    return body + enc_varint(9, DIGEST_FUNCTION_SHA256)


def wait_execution_request(operation_name: str) -> bytes:
    """WaitExecutionRequest: name=1."""
    return enc_str(1, operation_name)


@dataclass(frozen=True)
class AnyMessage:
    """``google.protobuf.Any``: type_url=1, value=2."""

    type_url: str
    value: bytes

    def encode(self) -> bytes:
        return enc_str(1, self.type_url) + enc_bytes(2, self.value)

    @classmethod
    def decode(cls, data: bytes) -> AnyMessage:
        type_url, payload = "", b""
        for number, _, value in fields(data):
            if number == 1:
                type_url = text_field(value)
            elif number == 2:
                payload = _as_bytes(value)
        return cls(type_url, payload)


@dataclass(frozen=True)
class RichStatus:
    """``google.rpc.Status`` with its details=3 (Any), and the blobs a ``PreconditionFailure``
    among them names as missing (violations=1: type=1 "MISSING", subject=2 "blobs/HASH/SIZE")."""

    code: int = 0
    message: str = ""
    missing: tuple[Digest, ...] = ()

    @classmethod
    def decode(cls, data: bytes) -> RichStatus:
        base = Status.decode(data)
        missing: list[Digest] = []
        for number, _, value in fields(data):
            if number != 3:
                continue
            detail = AnyMessage.decode(_as_bytes(value))
            if detail.type_url != TYPE_PRECONDITION_FAILURE:
                continue
            for sub, _, violation in fields(detail.value):
                if sub != 1:
                    continue
                kind = subject = ""
                for key, _, item in fields(_as_bytes(violation)):
                    if key == 1:
                        kind = text_field(item)
                    elif key == 2:
                        subject = text_field(item)
                parts = subject.split("/")
                if kind == "MISSING" and len(parts) == 3 and parts[0] == "blobs" and parts[2].isdigit():
                    missing.append(Digest(parts[1], int(parts[2])))
        return cls(base.code, base.message, tuple(missing))


@dataclass(frozen=True)
class ExecuteResponse:
    """``ExecuteResponse``: result=1, cached_result=2, status=3, message=5 (server_logs=4 skipped)."""

    result: ActionResult | None = None
    cached_result: bool = False
    status: RichStatus = RichStatus()
    message: str = ""

    @classmethod
    def decode(cls, data: bytes) -> ExecuteResponse:
        result: ActionResult | None = None
        cached = False
        status = RichStatus()
        message = ""
        for number, _, value in fields(data):
            if number == 1:
                result = ActionResult.decode(_as_bytes(value))
            elif number == 2:
                cached = bool(_as_int(value))
            elif number == 3:
                status = RichStatus.decode(_as_bytes(value))
            elif number == 5:
                message = _as_bytes(value).decode(errors="replace")
        return cls(result, cached, status, message)

    def encode(self) -> bytes:
        """For tests and servers; a client only decodes."""
        body = enc_msg(1, self.result.encode()) if self.result is not None else b""
        body += enc_bool(2, self.cached_result)
        if self.status.code or self.status.message:
            body += enc_msg(3, enc_varint(1, self.status.code) + enc_str(2, self.status.message))
        return body + enc_str(5, self.message)


@dataclass(frozen=True)
class Operation:
    """``google.longrunning.Operation``: name=1, metadata=2 (Any), done=3, error=4 (Status),
    response=5 (Any), with the REAPI payloads decoded: the stage from ExecuteOperationMetadata
    (stage=1) and the ExecuteResponse."""

    name: str
    done: bool = False
    stage: int = STAGE_UNKNOWN
    error: RichStatus | None = None
    response: ExecuteResponse | None = None

    @classmethod
    def decode(cls, data: bytes) -> Operation:
        name = ""
        done = False
        stage = STAGE_UNKNOWN
        error: RichStatus | None = None
        response: ExecuteResponse | None = None
        for number, _, value in fields(data):
            if number == 1:
                name = text_field(value)
            elif number == 2:
                meta = AnyMessage.decode(_as_bytes(value))
                if meta.type_url == TYPE_EXECUTE_METADATA:
                    for sub, _, item in fields(meta.value):
                        if sub == 1:
                            stage = _as_int(item)
            elif number == 3:
                done = bool(_as_int(value))
            elif number == 4:
                error = RichStatus.decode(_as_bytes(value))
            elif number == 5:
                payload = AnyMessage.decode(_as_bytes(value))
                if payload.type_url != TYPE_EXECUTE_RESPONSE:
                    raise WireError(f"an operation's response is a {payload.type_url!r}, not an ExecuteResponse")
                response = ExecuteResponse.decode(payload.value)
        return cls(name, done, stage, error, response)


@dataclass(frozen=True)
class ExecutionCapabilities:
    """``ServerCapabilities.execution_capabilities`` (field 2): digest_function=1, exec_enabled=2,
    digest_functions=5 (repeated, packed or not)."""

    exec_enabled: bool = False
    digest_functions: tuple[int, ...] = ()

    @classmethod
    def decode_server_capabilities(cls, data: bytes) -> ExecutionCapabilities | None:
        """The execution part of a GetCapabilities response, ``None`` when it has none."""
        found: bytes | None = None
        for number, _, value in fields(data):
            if number == 2:
                found = _as_bytes(value)
        if found is None:
            return None
        enabled = False
        functions: list[int] = []
        for number, _, value in fields(found):
            if number == 1:
                functions.append(_as_int(value))
            elif number == 2:
                enabled = bool(_as_int(value))
            elif number == 5:
                if isinstance(value, bytes):
                    pos = 0
                    while pos < len(value):
                        item, pos = _read_varint(value, pos)
                        functions.append(item)
                else:
                    functions.append(value)
        return cls(enabled, tuple(dict.fromkeys(functions)))
