"""A REAPI client made of BuildGrid's own generated protos and gRPC stubs, for tests that check
pbuild's worker (and pbuild's encoding) against the standard's encoding rather than our own.

Only tests import buildgrid. :class:`ReapiClient` uploads blobs, builds input roots from a dict,
submits an action, waits for its operation and reads results back.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # as pbuild: the test process forks workers

import grpc  # noqa: E402
import pytest  # noqa: E402

re_pb2 = pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc  # noqa: E402
from buildgrid._protos.google.longrunning import operations_pb2  # noqa: E402
from pbuild.engine.remote import actionformat  # noqa: E402


def digest(data: bytes) -> re_pb2.Digest:
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


@dataclass(frozen=True)
class Submitted:
    action_digest: re_pb2.Digest
    operation: str


class ReapiClient:
    """Talks to one server and instance with BuildGrid's stubs."""

    def __init__(self, target: str, instance_name: str = "") -> None:
        self.channel = grpc.insecure_channel(target)
        self.instance = instance_name
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.execution = re_grpc.ExecutionStub(self.channel)
        self.blobs: dict[str, bytes] = {}

    def close(self) -> None:
        self.channel.close()

    # --- blobs ---------------------------------------------------------------------------------

    def put(self, data: bytes) -> re_pb2.Digest:
        d = digest(data)
        self.blobs[d.hash] = data
        return d

    def upload_all(self) -> None:
        requests = [re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in self.blobs.values()]
        response = self.cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance,
                                                                          requests=requests), timeout=30)
        assert all(r.status.code == 0 for r in response.responses), response

    def read(self, d: re_pb2.Digest) -> bytes:
        response = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=[d]),
                                           timeout=30)
        (entry,) = response.responses
        assert entry.status.code == 0, entry.status
        assert hashlib.sha256(entry.data).hexdigest() == d.hash
        return bytes(entry.data)

    def directory(self, files: Mapping[str, bytes | tuple[bytes, bool]]) -> re_pb2.Digest:
        """The input root holding ``files`` (path -> bytes, or (bytes, executable)); a path
        ending in ``/`` is an empty folder."""
        tree: dict[str, object] = {}
        for path, content in files.items():
            parts = path.rstrip("/").split("/")
            node = tree
            for part in parts[:-1]:
                node = node.setdefault(part, {})  # type: ignore[assignment]
            if path.endswith("/"):
                node.setdefault(parts[-1], {})
            else:
                node[parts[-1]] = content
        return self._store_dir(tree)

    def _store_dir(self, node: Mapping[str, object]) -> re_pb2.Digest:
        msg = re_pb2.Directory()
        for name in sorted(node):
            value = node[name]
            if isinstance(value, dict):
                msg.directories.add(name=name, digest=self._store_dir(value))
            else:
                data, executable = value if isinstance(value, tuple) else (value, False)
                msg.files.add(name=name, digest=self.put(data), is_executable=executable)  # type: ignore[arg-type]
        return self.put(msg.SerializeToString())

    def raw_directory(self, msg: re_pb2.Directory) -> re_pb2.Digest:
        return self.put(msg.SerializeToString())

    # --- actions -------------------------------------------------------------------------------

    def action(self, argv: list[str], root: re_pb2.Digest, *, outputs: tuple[str, ...] = (),
               output_dirs: tuple[str, ...] = (), workdir: str = "", env: Mapping[str, str] | None = None,
               timeout_s: float | None = None, platform: tuple[tuple[str, str], ...] | None = None,
               salt: bytes = b"") -> re_pb2.Digest:
        props = platform if platform is not None else actionformat.platform_properties(None)
        plat = re_pb2.Platform(properties=[re_pb2.Platform.Property(name=n, value=v) for n, v in props])
        environment = sorted((env or {"PATH": "/usr/bin:/bin"}).items())
        command = re_pb2.Command(
            arguments=argv, working_directory=workdir, output_files=sorted(outputs),
            output_directories=sorted(output_dirs), platform=plat,
            environment_variables=[re_pb2.Command.EnvironmentVariable(name=n, value=v) for n, v in environment])
        action = re_pb2.Action(command_digest=self.put(command.SerializeToString()), input_root_digest=root,
                               platform=plat, do_not_cache=True, salt=salt)
        if timeout_s is not None:
            action.timeout.FromMilliseconds(int(timeout_s * 1000))
        return self.put(action.SerializeToString())

    def submit(self, action_digest: re_pb2.Digest) -> Submitted:
        """Execute, returning once the server named the operation (the stream is dropped)."""
        stream = self.execution.Execute(re_pb2.ExecuteRequest(instance_name=self.instance,
                                                              action_digest=action_digest,
                                                              skip_cache_lookup=True), timeout=30)
        first = next(iter(stream))
        stream.cancel()
        return Submitted(action_digest, first.name)

    def wait(self, submitted: Submitted, timeout_s: float = 90) -> re_pb2.ExecuteResponse:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"operation {submitted.operation} did not finish within {timeout_s}s")
            try:
                for op in self.execution.WaitExecution(re_pb2.WaitExecutionRequest(name=submitted.operation),
                                                       timeout=min(remaining, 20)):
                    if op.done:
                        return _response(op)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    raise
                time.sleep(0.2)

    def run(self, action_digest: re_pb2.Digest, timeout_s: float = 90) -> re_pb2.ExecuteResponse:
        """Execute and wait on one stream (the round trip a client sees)."""
        deadline = time.monotonic() + timeout_s
        for op in self.execution.Execute(re_pb2.ExecuteRequest(instance_name=self.instance,
                                                               action_digest=action_digest,
                                                               skip_cache_lookup=True), timeout=timeout_s):
            if op.done:
                return _response(op)
            if time.monotonic() > deadline:
                break
        raise TimeoutError("the Execute stream ended without a result")


def _response(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    assert op.HasField("response"), op
    response = re_pb2.ExecuteResponse()
    op.response.Unpack(response)
    return response
