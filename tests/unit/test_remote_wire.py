"""The hand-written REAPI messages agree with the messages generated from the published API.

BuildGrid ships generated classes for the REAPI, ByteStream and google.rpc protos; encoding with
one side and decoding with the other proves the field numbers and wire types right.
"""

from __future__ import annotations

import hashlib

import pytest
from pbuild.engine.remote import _wire as wire

pb = pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")
bytestream_pb2 = pytest.importorskip("buildgrid._protos.google.bytestream.bytestream_pb2")
status_pb2 = pytest.importorskip("buildgrid._protos.google.rpc.status_pb2")

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"bb").hexdigest()


def test_action_result_round_trips_through_generated_classes() -> None:
    ours = wire.ActionResult(
        output_files=(wire.OutputFile("pbuild-out/a", wire.Digest(SHA_A, 1), False),
                      wire.OutputFile("pbuild-out/b", wire.Digest(SHA_B, 2), True)),
        exit_code=-3, stdout_digest=wire.Digest(SHA_A, 1), stderr_digest=wire.Digest(SHA_B, 2))
    theirs = pb.ActionResult.FromString(ours.encode())
    assert [(f.path, f.digest.hash, f.digest.size_bytes, f.is_executable) for f in theirs.output_files] == [
        ("pbuild-out/a", SHA_A, 1, False), ("pbuild-out/b", SHA_B, 2, True)]
    assert theirs.exit_code == -3
    assert (theirs.stdout_digest.hash, theirs.stderr_digest.size_bytes) == (SHA_A, 2)
    assert wire.ActionResult.decode(theirs.SerializeToString()) == ours


def test_decoding_flags_outputs_pbuild_cannot_write() -> None:
    theirs = pb.ActionResult(output_directories=[pb.OutputDirectory(path="d")])
    theirs.execution_metadata.worker = "w"  # unknown to us: skipped
    decoded = wire.ActionResult.decode(theirs.SerializeToString())
    assert decoded.output_directories == (wire.OutputDirectory("d", wire.Digest("", 0)),)
    assert decoded.execution_metadata == wire.ExecutedActionMetadata("w")
    symlink = pb.ActionResult(output_symlinks=[pb.OutputSymlink(path="l", target="t")])
    assert wire.ActionResult.decode(symlink.SerializeToString()).has_unsupported_outputs


def test_requests_decode_with_generated_classes() -> None:
    digest = wire.Digest(SHA_A, 1)
    get = pb.GetActionResultRequest.FromString(wire.get_action_result_request("inst", digest))
    assert (get.instance_name, get.action_digest.hash, get.digest_function) == ("inst", SHA_A, pb.DigestFunction.SHA256)
    update = pb.UpdateActionResultRequest.FromString(
        wire.update_action_result_request("inst", digest, wire.ActionResult(exit_code=1).encode()))
    assert update.action_result.exit_code == 1 and update.digest_function == pb.DigestFunction.SHA256
    find = pb.FindMissingBlobsRequest.FromString(wire.find_missing_blobs_request("", [digest, digest]))
    assert len(find.blob_digests) == 2 and find.digest_function == pb.DigestFunction.SHA256
    batch = pb.BatchUpdateBlobsRequest.FromString(wire.batch_update_blobs_request("i", [(digest, b"a")]))
    assert batch.requests[0].data == b"a" and batch.requests[0].digest.hash == SHA_A
    assert batch.digest_function == pb.DigestFunction.SHA256
    read = pb.BatchReadBlobsRequest.FromString(wire.batch_read_blobs_request("i", [digest]))
    assert read.digests[0].size_bytes == 1 and read.digest_function == pb.DigestFunction.SHA256
    caps = pb.GetCapabilitiesRequest.FromString(wire.get_capabilities_request("i"))
    assert caps.instance_name == "i"
    write = bytestream_pb2.WriteRequest.FromString(wire.bytestream_write_request("r", 5, b"xy", True))
    assert (write.resource_name, write.write_offset, write.finish_write, write.data) == ("r", 5, True, b"xy")
    bs_read = bytestream_pb2.ReadRequest.FromString(wire.bytestream_read_request("r", 7))
    assert (bs_read.resource_name, bs_read.read_offset) == ("r", 7)


def test_responses_from_generated_classes_decode() -> None:
    missing = pb.FindMissingBlobsResponse(missing_blob_digests=[pb.Digest(hash=SHA_A, size_bytes=1)])
    assert wire.decode_find_missing_blobs_response(missing.SerializeToString()) == [wire.Digest(SHA_A, 1)]
    update = pb.BatchUpdateBlobsResponse(responses=[pb.BatchUpdateBlobsResponse.Response(
        digest=pb.Digest(hash=SHA_A, size_bytes=1), status=status_pb2.Status(code=3, message="bad"))])
    assert wire.decode_batch_update_blobs_response(update.SerializeToString()) == [
        (wire.Digest(SHA_A, 1), wire.Status(3, "bad"))]
    read = pb.BatchReadBlobsResponse(responses=[pb.BatchReadBlobsResponse.Response(
        digest=pb.Digest(hash=SHA_A, size_bytes=1), data=b"a")])
    assert wire.decode_batch_read_blobs_response(read.SerializeToString())[0].data == b"a"
    caps = pb.ServerCapabilities(cache_capabilities=pb.CacheCapabilities(
        digest_functions=[pb.DigestFunction.SHA1, pb.DigestFunction.SHA256], max_batch_total_size_bytes=1234,
        action_cache_update_capabilities=pb.ActionCacheUpdateCapabilities(update_enabled=True)))
    decoded = wire.decode_server_capabilities(caps.SerializeToString())
    assert decoded == wire.CacheCapabilities((pb.DigestFunction.SHA1, pb.DigestFunction.SHA256), True, 1234, 0)
    assert wire.decode_server_capabilities(pb.ServerCapabilities().SerializeToString()) is None
    assert wire.decode_bytestream_read_response(bytestream_pb2.ReadResponse(data=b"zz").SerializeToString()) == b"zz"
    assert wire.decode_bytestream_write_response(
        bytestream_pb2.WriteResponse(committed_size=9).SerializeToString()) == 9


@pytest.mark.parametrize("garbage", [b"\x0a\xff", b"\x08", b"\x0b", b"\x12\x05ab"])
def test_truncated_or_invalid_bytes_raise_wire_error(garbage: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.ActionResult.decode(garbage)
