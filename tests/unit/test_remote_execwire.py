"""The hand-written execution messages agree byte for byte with those generated from the published
API (BuildGrid's pb2 classes): what pbuild encodes, protobuf decodes to the same values and
re-encodes to the same bytes (so digests match), and what protobuf encodes, pbuild decodes."""

from __future__ import annotations

import hashlib

import pytest
from pbuild.engine.remote import _execwire as ex
from pbuild.engine.remote import _wire as wire

pb = pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")
operations_pb2 = pytest.importorskip("buildgrid._protos.google.longrunning.operations_pb2")
status_pb2 = pytest.importorskip("buildgrid._protos.google.rpc.status_pb2")
error_details_pb2 = pytest.importorskip("buildgrid._protos.google.rpc.error_details_pb2")

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"bb").hexdigest()
PLATFORM = (("ISA", "x86-64"), ("OSFamily", "linux"), ("pbuild-action-format", "1"))


def test_command_encodes_as_protobuf_does() -> None:
    ours = ex.Command(arguments=("/bin/sh", "-c", "echo hi > out/x"), environment=(("A", "1"), ("PATH", "/bin")),
                      output_files=("out/x",), output_directories=("out/d",), platform=PLATFORM,
                      working_directory="pkg", output_paths=("out/d", "out/x"))
    theirs = pb.Command.FromString(ours.encode())
    assert list(theirs.arguments) == ["/bin/sh", "-c", "echo hi > out/x"]
    assert [(e.name, e.value) for e in theirs.environment_variables] == [("A", "1"), ("PATH", "/bin")]
    assert list(theirs.output_files) == ["out/x"] and list(theirs.output_directories) == ["out/d"]
    assert list(theirs.output_paths) == ["out/d", "out/x"] and theirs.working_directory == "pkg"
    assert [(p.name, p.value) for p in theirs.platform.properties] == list(PLATFORM)
    assert theirs.SerializeToString(deterministic=True) == ours.encode()
    assert ex.Command.decode(theirs.SerializeToString()) == ours


def test_action_encodes_as_protobuf_does() -> None:
    ours = ex.Action(wire.Digest(SHA_A, 1), wire.Digest(SHA_B, 2), timeout_s=90.5, platform=PLATFORM)
    theirs = pb.Action.FromString(ours.encode())
    assert (theirs.command_digest.hash, theirs.input_root_digest.size_bytes) == (SHA_A, 2)
    assert (theirs.timeout.seconds, theirs.timeout.nanos) == (90, 500_000_000)
    assert theirs.SerializeToString(deterministic=True) == ours.encode()
    assert ex.Action.decode(theirs.SerializeToString()) == ours


def test_directory_and_tree_encode_as_protobuf_does() -> None:
    child = ex.Directory(files=(ex.FileNode("b", wire.Digest(SHA_B, 2), True), ex.FileNode("a", wire.Digest(SHA_A, 1))))
    root = ex.Directory(directories=(ex.DirectoryNode("sub", ex.digest_of(child.encode())),),
                        symlinks=(ex.SymlinkNode("l", "sub/a"),))
    theirs = pb.Directory.FromString(child.encode())
    assert [f.name for f in theirs.files] == ["a", "b"]  # sorted on encoding
    assert theirs.files[1].is_executable and theirs.SerializeToString(deterministic=True) == child.encode()
    tree = ex.Tree(root, (child,))
    decoded = pb.Tree.FromString(tree.encode())
    assert decoded.root.directories[0].name == "sub" and decoded.root.symlinks[0].target == "sub/a"
    assert ex.Tree.decode(decoded.SerializeToString()).children[0].files[0] == ex.FileNode("a", wire.Digest(SHA_A, 1))


def test_directory_entry_without_digest_and_bad_names_are_refused() -> None:
    for theirs in (pb.Directory(directories=[pb.DirectoryNode(name="d")]), pb.Directory(files=[pb.FileNode(name="x")])):
        with pytest.raises(ex.WireError, match="no digest"):
            ex.Directory.decode(theirs.SerializeToString())
    assert ex.check_name("ok") is None
    for bad in ("", ".", "..", "a/b", "x\0"):
        assert ex.check_name(bad) is not None
    with pytest.raises(ex.WireError):
        ex.Tree.decode(b"")


def test_execute_and_wait_requests() -> None:
    request = pb.ExecuteRequest.FromString(ex.execute_request("inst", wire.Digest(SHA_A, 1), skip_cache_lookup=True,
                                                              priority=3))
    assert (request.instance_name, request.action_digest.hash, request.skip_cache_lookup) == ("inst", SHA_A, True)
    assert request.execution_policy.priority == 3 and request.digest_function == pb.DigestFunction.SHA256
    assert pb.WaitExecutionRequest.FromString(ex.wait_execution_request("op/1")).name == "op/1"


def _operation(response: object | None, *, stage: int, done: bool) -> bytes:
    op = operations_pb2.Operation(name="ops/7", done=done)
    meta = pb.ExecuteOperationMetadata(stage=stage, action_digest=pb.Digest(hash=SHA_A, size_bytes=1))
    op.metadata.Pack(meta)
    if response is not None:
        op.response.Pack(response)
    return op.SerializeToString()


def test_operation_with_execute_response_decodes() -> None:
    result = pb.ActionResult(exit_code=2, stdout_digest=pb.Digest(hash=SHA_A, size_bytes=1),
                             output_directories=[pb.OutputDirectory(path="out/d",
                                                                    tree_digest=pb.Digest(hash=SHA_B, size_bytes=2))])
    result.execution_metadata.worker = "w1"
    result.execution_metadata.worker_start_timestamp.FromNanoseconds(5_000_000_000)
    result.execution_metadata.worker_completed_timestamp.FromNanoseconds(7_250_000_000)
    response = pb.ExecuteResponse(result=result, cached_result=True, message="hello")
    op = ex.Operation.decode(_operation(response, stage=4, done=True))
    assert (op.name, op.done, op.stage) == ("ops/7", True, ex.STAGE_COMPLETED)
    assert op.response is not None and op.response.cached_result and op.response.message == "hello"
    res = op.response.result
    assert res is not None and res.exit_code == 2 and res.stdout_digest == wire.Digest(SHA_A, 1)
    assert res.output_directories == (wire.OutputDirectory("out/d", wire.Digest(SHA_B, 2)),)
    assert res.execution_metadata is not None and res.execution_metadata.worker == "w1"
    assert res.execution_metadata.seconds_between("worker_start", "worker_completed") == pytest.approx(2.25)
    queued = ex.Operation.decode(_operation(None, stage=2, done=False))
    assert (queued.stage, queued.done, queued.response) == (ex.STAGE_QUEUED, False, None)


def test_action_result_with_metadata_round_trips() -> None:
    ours = wire.ActionResult(
        output_files=(wire.OutputFile("out/x", wire.Digest(SHA_A, 1), True),),
        output_directories=(wire.OutputDirectory("out/d", wire.Digest(SHA_B, 2)),),
        exit_code=0, stdout_digest=wire.Digest(SHA_A, 1),
        execution_metadata=wire.ExecutedActionMetadata("bot-1", (("worker_start", wire.Timestamp(5, 10)),
                                                                 ("worker_completed", wire.Timestamp(6, 0)))))
    theirs = pb.ActionResult.FromString(ours.encode())
    assert theirs.execution_metadata.worker == "bot-1" and theirs.execution_metadata.worker_start_timestamp.nanos == 10
    assert theirs.SerializeToString(deterministic=True) == ours.encode()
    assert wire.ActionResult.decode(theirs.SerializeToString()) == ours


def test_missing_blobs_precondition_failure_is_read() -> None:
    failure = error_details_pb2.PreconditionFailure(violations=[
        error_details_pb2.PreconditionFailure.Violation(type="MISSING", subject=f"blobs/{SHA_A}/1"),
        error_details_pb2.PreconditionFailure.Violation(type="MISSING", subject="junk"),
    ])
    status = status_pb2.Status(code=9, message="missing blobs")
    status.details.add().Pack(failure)
    response = pb.ExecuteResponse(status=status)
    op = ex.Operation.decode(_operation(response, stage=4, done=True))
    assert op.response is not None
    assert op.response.status == ex.RichStatus(ex.CODE_FAILED_PRECONDITION, "missing blobs", (wire.Digest(SHA_A, 1),))


def test_execution_capabilities() -> None:
    caps = pb.ServerCapabilities(execution_capabilities=pb.ExecutionCapabilities(
        digest_function=pb.DigestFunction.SHA256, exec_enabled=True, digest_functions=[pb.DigestFunction.SHA256]))
    decoded = ex.ExecutionCapabilities.decode_server_capabilities(caps.SerializeToString())
    assert decoded == ex.ExecutionCapabilities(True, (wire.DIGEST_FUNCTION_SHA256,))
    assert ex.ExecutionCapabilities.decode_server_capabilities(pb.ServerCapabilities().SerializeToString()) is None
