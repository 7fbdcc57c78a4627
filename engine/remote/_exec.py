"""A REAPI v2 Execution client: actions run on a server's workers (BuildGrid, Buildbarn, ...).

Per action: its Directory, Command and Action messages (:mod:`._merkle`), FindMissingBlobs for
those and the input files the server is not known to hold in this build, uploads of what it
lacks (batches, ByteStream when large: :class:`._grpc.ReapiChannel`), then ``Execute``, a
server stream of ``Operation`` messages ending with one that is done. A stream that drops before
that is resumed with ``WaitExecution`` on the operation's name; an operation the server forgot
(restarted) is executed again. A ``FAILED_PRECONDITION`` naming missing blobs (the server lost
them since it said it had them) re-uploads them and executes once more. Each execution has a
deadline: the action's timeout (an hour without one) plus the remote timeout.

What comes back is hostile until checked: output paths (relative to the working directory, as
REAPI defines them) must stay inside the exec root, an output directory's ``Tree`` must hash to
its digest and name only plain single components, and symlinks are refused. Output bytes are
verified by the caller's downloads (:meth:`fetch_blob`, sha256 and size).
"""

from __future__ import annotations

import hashlib
import posixpath
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import grpc
from pbuild.engine.remote import (
    ExecutionFailed,
    ExecutorUnavailable,
    RemoteActionResult,
    RemoteExecRequest,
    RemoteExecution,
    RemoteOutput,
    RemoteSettings,
    actionformat,
)
from pbuild.engine.remote import _wire as wire
from pbuild.engine.remote._base import (
    EMPTY_SHA256,
    BlobToUpload,
    Corrupt,
    Missing,
    Refused,
    RemoteBase,
    RemoteFailure,
    TimedOut,
    Transient,
    UploadRefused,
    check_digest,
)
from pbuild.engine.remote._execwire import (
    CODE_DEADLINE_EXCEEDED,
    CODE_FAILED_PRECONDITION,
    Directory,
    DirectoryNode,
    ExecuteResponse,
    ExecutionCapabilities,
    FileNode,
    Operation,
    RichStatus,
    check_name,
    execute_request,
    wait_execution_request,
)
from pbuild.engine.remote._grpc import ReapiChannel, rpc_failure
from pbuild.engine.remote._index import Sha256Index
from pbuild.engine.remote._merkle import ActionMessages, MerkleBuilder

_EXECUTE = "/build.bazel.remote.execution.v2.Execution/Execute"
_WAIT_EXECUTION = "/build.bazel.remote.execution.v2.Execution/WaitExecution"
_NO_TIMEOUT_S = 3600.0  # the deadline of an action without a timeout of its own
_STATUS_DETAILS = "grpc-status-details-bin"
_CODE_NOT_FOUND, _CODE_DATA_LOSS = 5, 15
_LOST_CODES = {CODE_FAILED_PRECONDITION, _CODE_NOT_FOUND, _CODE_DATA_LOSS}  # retried once after re-uploading
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _identity(data: bytes) -> bytes:
    return data


class GrpcRemoteExecutor(RemoteBase):
    """A :class:`pbuild.engine.remote.RemoteExecutor` over gRPC. Thread-safe."""

    role = "remote executor"

    def __init__(self, settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None],
                 sha_index: Sha256Index) -> None:
        endpoint = settings.executor or ""
        super().__init__(replace(settings, url=endpoint), cache_dir=cache_dir, warn=warn)
        self.rpc = ReapiChannel(endpoint, settings, attempt=self.attempt, count=self.count)
        self._execute = self.rpc.channel.unary_stream(_EXECUTE, request_serializer=_identity,
                                                      response_deserializer=_identity)
        self._wait = self.rpc.channel.unary_stream(_WAIT_EXECUTION, request_serializer=_identity,
                                                   response_deserializer=_identity)
        self._merkle = MerkleBuilder(sha_index)
        self._present: set[str] = set()  # sha256 of blobs the server holds, as learned in this build
        self._present_lock = threading.Lock()

    # --- capabilities ---------------------------------------------------------------------------

    def probe(self) -> None:
        """Check that the server executes actions with sha256 digests; raise
        :class:`ExecutorUnavailable` saying why not."""
        try:
            data = self.rpc.capabilities()
            execution = ExecutionCapabilities.decode_server_capabilities(data)
            cache = wire.decode_server_capabilities(data)
        except RemoteFailure as exc:
            raise ExecutorUnavailable(f"cannot reach the server ({exc})") from None
        except wire.WireError as exc:
            raise ExecutorUnavailable(f"undecodable capabilities ({exc})") from None
        if execution is None:
            raise ExecutorUnavailable("the server offers no Execution service (no execution_capabilities)")
        if not execution.exec_enabled:
            raise ExecutorUnavailable("the server does not execute actions (execution_capabilities.exec_enabled "
                                      "is false): it is a cache only; use it as --remote-cache")
        if wire.DIGEST_FUNCTION_SHA256 not in execution.digest_functions:
            raise ExecutorUnavailable(f"the server does not execute with SHA256 digests (it offers digest "
                                      f"functions {list(execution.digest_functions)})")
        if cache is not None:
            self.rpc.use_limits(cache)

    # --- the RemoteExecutor protocol --------------------------------------------------------------

    def execute(self, request: RemoteExecRequest) -> RemoteExecution:
        messages = self._merkle.build(request)
        self._upload(messages)
        limit = (request.timeout_s or _NO_TIMEOUT_S) + self.settings.timeout_s
        deadline = time.monotonic() + limit
        response = self._run(messages, request.skip_cache_lookup, deadline, limit)
        if response.status.code in _LOST_CODES:
            # The server lacks blobs it was said (or said) to hold: evicted, or restarted with an
            # empty CAS (then a job it kept in its database may name outputs that are gone:
            # DATA_LOSS). Upload them again, without trusting this build's memory, and run once
            # more, past the server's action cache when what it had is lost.
            self._forget(messages, response.status)
            self._upload(messages)
            skip = request.skip_cache_lookup or response.status.code != CODE_FAILED_PRECONDITION
            response = self._run(messages, skip, deadline, limit)
        status = response.status
        if status.code == CODE_DEADLINE_EXCEEDED and (response.result is None or response.result.exit_code == 0):
            raise ExecutionFailed(f"{request.label} timed out on the worker"
                                  + (f" ({status.message})" if status.message else ""))
        if status.code not in (0, CODE_DEADLINE_EXCEEDED):
            name = _CODE_NAMES.get(status.code, str(status.code))
            raise ExecutorUnavailable(f"executing {request.label} failed: {name} {status.message}".rstrip())
        if response.result is None:
            raise ExecutionFailed(f"the server finished {request.label} without a result")
        result = self._result(response.result, request)
        metadata = response.result.execution_metadata
        if not response.cached_result:
            self.count("executed")
        return RemoteExecution(result, worker=metadata.worker if metadata is not None else "",
                               cached=response.cached_result)

    # --- uploads ----------------------------------------------------------------------------------

    def _upload(self, messages: ActionMessages) -> None:
        blobs = [BlobToUpload(sha, len(data), "", data) for sha, data in messages.messages.items()]
        blobs += [BlobToUpload(b.sha256, b.size, b.path) for b in messages.files.values()]
        with self._present_lock:
            todo = [b for b in blobs if b.sha256 != EMPTY_SHA256 and b.sha256 not in self._present]
        if not todo:
            return
        if self.rpc.max_blob:
            big = next((b for b in todo if b.size > self.rpc.max_blob), None)
            if big is not None:
                raise ExecutionFailed(f"an input of {big.size} bytes exceeds the server's "
                                      f"max_cas_blob_size_bytes ({self.rpc.max_blob})")
        lost_since: float | None = None
        delay = 0.05
        while True:
            try:
                self.rpc.upload(self.rpc.find_missing(todo))
                break
            except (Refused, UploadRefused) as exc:
                raise ExecutorUnavailable(f"uploading the inputs was refused ({exc})") from None
            except Transient as exc:
                # A server restarting is waited out for up to --remote-timeout, as in _run.
                now = time.monotonic()
                lost_since = now if lost_since is None else lost_since
                if now - lost_since > self.settings.timeout_s:
                    raise ExecutorUnavailable(f"uploading the inputs failed for more than "
                                              f"{self.settings.timeout_s:.0f} s ({exc})") from None
                time.sleep(delay * (1.0 + random.random()))
                delay = min(delay * 2, 2.0)
            except RemoteFailure as exc:
                raise ExecutorUnavailable(f"uploading the inputs failed ({exc})") from None
        with self._present_lock:
            self._present.update(b.sha256 for b in todo)

    def _forget(self, messages: ActionMessages, status: RichStatus) -> None:
        named = {d.hash for d in status.missing}
        with self._present_lock:
            if named:
                self._present -= named
            else:  # no details: assume the worst for this action's blobs
                self._present -= set(messages.messages) | set(messages.files)

    # --- executing --------------------------------------------------------------------------------

    def _run(self, messages: ActionMessages, skip_cache: bool, deadline: float, limit: float) -> ExecuteResponse:
        """Execute (and resume with WaitExecution) until the operation is done."""
        name: str | None = None
        lost_since: float | None = None  # when the connection was lost, while it stays lost
        delay = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExecutionFailed(f"no result within {limit:.0f} s (the action's timeout plus --remote-timeout)")
            try:
                if name is None:
                    stream = self._execute(execute_request(self.rpc.instance, messages.action_digest,
                                                           skip_cache_lookup=skip_cache),
                                           timeout=remaining, metadata=self.rpc.metadata)
                else:
                    stream = self._wait(wait_execution_request(name), timeout=remaining, metadata=self.rpc.metadata)
                for raw in stream:
                    operation = Operation.decode(raw)
                    lost_since, delay = None, 0.05
                    if operation.name:
                        name = operation.name
                    if operation.done:
                        return self._finished(operation)
                failure: RemoteFailure = Transient("the stream ended before the operation was done")
            except grpc.RpcError as exc:
                precondition = _precondition(exc)
                if precondition is not None:
                    return ExecuteResponse(status=precondition)
                failure = rpc_failure(exc, "Execute" if name is None else "WaitExecution")
            except wire.WireError as exc:
                raise ExecutionFailed(f"undecodable answer from the server ({exc})") from None
            if isinstance(failure, TimedOut):
                raise ExecutionFailed(f"no result within {limit:.0f} s (the action's timeout plus "
                                      f"--remote-timeout)") from None
            if isinstance(failure, Missing) and name is not None:
                name = None  # the server forgot the operation (restarted): execute it again
            elif not isinstance(failure, Transient):
                raise ExecutorUnavailable(str(failure))
            # A server restarting (or a network blip) is waited out for up to --remote-timeout.
            now = time.monotonic()
            lost_since = now if lost_since is None else lost_since
            if now - lost_since > self.settings.timeout_s:
                raise ExecutorUnavailable(f"lost for more than {self.settings.timeout_s:.0f} s ({failure})")
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, 2.0)

    @staticmethod
    def _finished(operation: Operation) -> ExecuteResponse:
        if operation.error is not None and operation.error.code != 0:
            return ExecuteResponse(status=operation.error)
        if operation.response is None:
            raise ExecutionFailed("the server's operation is done without a response")
        return operation.response

    # --- results ----------------------------------------------------------------------------------

    def _result(self, result: wire.ActionResult, request: RemoteExecRequest) -> RemoteActionResult:
        """The worker's result with exec-root-relative paths and directories flattened; refused
        (:class:`ExecutionFailed`) when it names what cannot be written safely."""
        if result.has_unsupported_outputs:
            raise ExecutionFailed(f"the worker's result for {request.label} has symlinks or inline outputs, "
                                  f"which pbuild does not write")
        outputs: list[RemoteOutput] = []
        try:
            for f in result.output_files:
                check_digest(f.digest)
                outputs.append(RemoteOutput(self._path(f.path, request), f.digest.hash, f.digest.size_bytes,
                                            f.is_executable))
            for d in result.output_directories:
                check_digest(d.tree_digest)
                top = self._path(d.path, request)
                outputs.extend(self._flatten(top, self._tree(d.tree_digest)))
            for stream in (result.stdout_digest, result.stderr_digest):
                if stream is not None:
                    check_digest(stream)
        except Corrupt as exc:
            raise ExecutionFailed(f"the worker's result for {request.label} is unusable: {exc}") from None
        return RemoteActionResult(
            outputs=tuple(outputs), exit_code=result.exit_code,
            stdout_sha256=result.stdout_digest.hash if result.stdout_digest else None,
            stderr_sha256=result.stderr_digest.hash if result.stderr_digest else None,
            stdout_size=result.stdout_digest.size_bytes if result.stdout_digest else None,
            stderr_size=result.stderr_digest.size_bytes if result.stderr_digest else None,
        )

    @staticmethod
    def _path(path: str, request: RemoteExecRequest) -> str:
        full = actionformat.result_path(path, request.workdir) if path else ""
        if (not path or path.startswith("/") or not full or full == "." or full == ".."
                or full.startswith("../") or "\0" in path):
            raise Corrupt(f"it names the output path {path!r}, outside the exec root")
        return full

    def _tree(self, digest: wire.Digest) -> tuple[Directory, dict[str, Directory]]:
        """An output directory's Tree, verified: its root and its children by the digest of
        each child's bytes as the server sent them (not as re-encoded here)."""
        chunks: list[bytes] = []

        def read() -> None:
            chunks.clear()
            self.rpc.read_blob(digest.hash, digest.size_bytes, chunks.append)

        try:
            self.attempt(read)
        except RemoteFailure as exc:
            raise Corrupt(f"its output Tree {digest.hash[:12]}… cannot be read ({exc})") from None
        data = b"".join(chunks)
        if len(data) != digest.size_bytes or hashlib.sha256(data).hexdigest() != digest.hash:
            raise Corrupt(f"its output Tree {digest.hash[:12]}… does not match its digest")
        root: Directory | None = None
        children: dict[str, Directory] = {}
        try:
            for number, _, value in wire.fields(data):
                if number == 1 and isinstance(value, bytes):
                    root = Directory.decode(value)
                elif number == 2 and isinstance(value, bytes):
                    children[hashlib.sha256(value).hexdigest()] = Directory.decode(value)
        except (wire.WireError, UnicodeDecodeError) as exc:
            raise Corrupt(f"its output Tree {digest.hash[:12]}… is undecodable ({exc})") from None
        if root is None:
            raise Corrupt(f"its output Tree {digest.hash[:12]}… has no root directory")
        return root, children

    @staticmethod
    def _flatten(top: str, tree: tuple[Directory, dict[str, Directory]]) -> Iterator[RemoteOutput]:
        """Every file of ``tree`` as an output below ``top``; names checked, no symlinks, each
        child Directory found by its digest."""
        root, children = tree
        stack: list[tuple[str, Directory, int]] = [(top, root, 0)]
        total = 0
        while stack:
            prefix, directory, depth = stack.pop()
            total += 1
            if depth > 256 or total > 1_000_000:
                raise Corrupt(f"its output directory {top} nests deeper than 256 levels or holds too many folders")
            if directory.symlinks:
                raise Corrupt(f"its output directory {prefix} holds a symlink {directory.symlinks[0].name!r}")
            seen: set[str] = set()
            nodes: list[FileNode | DirectoryNode] = [*directory.files, *directory.directories]
            for node in nodes:
                why = check_name(node.name)
                if why is not None:
                    raise Corrupt(f"its output directory {prefix} has an entry with {why}")
                if node.name in seen:
                    raise Corrupt(f"its output directory {prefix} names {node.name!r} twice")
                seen.add(node.name)
                try:
                    check_digest(node.digest)
                except Corrupt as exc:
                    raise Corrupt(f"its output directory {prefix}, entry {node.name!r}: {exc}") from None
            for f in directory.files:
                yield RemoteOutput(posixpath.join(prefix, f.name), f.digest.hash, f.digest.size_bytes, f.is_executable)
            for d in directory.directories:
                child = children.get(d.digest.hash)
                if child is None:
                    raise Corrupt(f"its output directory {prefix}/{d.name} is not in the Tree")
                stack.append((posixpath.join(prefix, d.name), child, depth + 1))

    # --- RemoteBase hooks (downloads go through RemoteBase.fetch_blob, verified) ------------------

    def _failed(self, what: str, exc: Exception) -> None:
        """A download that failed: an output that is not what the worker reported (missing, or
        other bytes) is said once per build, since the scheduler re-runs the action; anything
        else as for a cache."""
        if isinstance(exc, Corrupt | Missing):
            self.count("errors")
            self.warn_once("bad-output", f"{self.role} {self.name}: a worker's output {what} is not what it "
                                         f"reported ({exc}); running the action again (once more remotely, "
                                         f"then locally; further ones are not reported)")
            return
        super()._failed(what, exc)

    def _read_blob(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        self.rpc.read_blob(sha256, size, sink)

    def _read_action_result(self, key_sha256: str) -> bytes | None:
        raise NotImplementedError("the executor is not the action cache")

    def _write_action_result(self, key_sha256: str, encoded: bytes) -> None:
        raise NotImplementedError("the executor is not the action cache")

    def _upload_blobs(self, blobs: list[BlobToUpload], replace: frozenset[str]) -> None:
        raise NotImplementedError("the executor uploads inputs itself")

    def _close(self) -> None:
        self.rpc.close()


def _precondition(exc: grpc.RpcError) -> RichStatus | None:
    """A FAILED_PRECONDITION call error as the Status it carries (with its missing blobs)."""
    code = exc.code() if hasattr(exc, "code") else None
    if code != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    details = exc.details() if hasattr(exc, "details") else ""
    trailer = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailer or ():
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            try:
                return RichStatus.decode(value)
            except (wire.WireError, UnicodeDecodeError):
                break
    return RichStatus(CODE_FAILED_PRECONDITION, details or "")


def open_executor(settings: RemoteSettings, *, cache_dir: str, warn: Callable[[str], None],
                  sha_index: Sha256Index) -> GrpcRemoteExecutor:
    """Connect to ``settings.executor`` and check what it offers; raises
    :class:`ExecutorUnavailable` with the reason when it cannot run actions."""
    executor = GrpcRemoteExecutor(settings, cache_dir=cache_dir, warn=warn, sha_index=sha_index)
    try:
        executor.probe()
    except ExecutorUnavailable:
        executor.close()
        raise
    return executor
