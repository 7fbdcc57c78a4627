"""The worker's Bots API codecs against BuildGrid's generated classes (the standard's encoding),
and the worker's checks of output paths."""

from __future__ import annotations

import pytest
from pbuild.engine.remote._execwire import TYPE_ACTION, TYPE_ACTION_RESULT, Action, AnyMessage, Command
from pbuild.engine.remote._wire import ActionResult, Digest
from pbuild.engine.remote.worker import _bots as bots

bots_pb2 = pytest.importorskip("buildgrid._protos.google.devtools.remoteworkers.v1test2.bots_pb2")
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from buildgrid._protos.google.rpc import error_details_pb2  # noqa: E402

H = "ab" * 32


def _session() -> bots.BotSession:
    device = bots.Device("w1", (("ISA", "x86-64"), ("OSFamily", "linux"), ("pbuild-action-format", "1")))
    worker = bots.Worker((device,), (("pool", "a"),), (("capacity", "4"),))
    done = bots.Lease("lease-2", bots.LEASE_COMPLETED,
                      result=AnyMessage(TYPE_ACTION_RESULT, ActionResult(exit_code=3).encode()),
                      status=bots.LeaseStatus(0, ""))
    return bots.BotSession("w1", bots.BOT_OK, worker, "inst/123", (bots.Lease("lease-1", bots.LEASE_ACTIVE), done),
                           "7")


def test_a_bot_session_encodes_as_the_generated_class_does() -> None:
    ours = _session()
    theirs = bots_pb2.BotSession.FromString(ours.encode())
    assert theirs.name == "inst/123" and theirs.bot_id == "w1" and theirs.status == bots_pb2.OK
    assert theirs.version == "7"
    (device,) = theirs.worker.devices
    assert device.handle == "w1"
    assert [(p.key, p.value) for p in device.properties] == list(ours.worker.devices[0].properties)
    assert [(c.key, c.value) for c in theirs.worker.configs] == [("capacity", "4")]
    assert [(p.key, p.value) for p in theirs.worker.properties] == [("pool", "a")]
    assert [(lease.id, lease.state) for lease in theirs.leases] == [("lease-1", bots_pb2.ACTIVE),
                                                                   ("lease-2", bots_pb2.COMPLETED)]
    result = re_pb2.ActionResult()
    assert theirs.leases[1].result.Unpack(result) and result.exit_code == 3
    # Field order and defaults as protobuf's own serializer: the same bytes.
    assert theirs.SerializeToString() == ours.encode()


def test_a_bot_session_from_the_server_decodes() -> None:
    action = re_pb2.Action(command_digest=re_pb2.Digest(hash=H, size_bytes=12),
                           input_root_digest=re_pb2.Digest(hash=H, size_bytes=0), do_not_cache=True)
    lease = bots_pb2.Lease(id="job-1", state=bots_pb2.ACTIVE)
    lease.payload.Pack(action)
    session = bots_pb2.BotSession(name="/abc", bot_id="w1", status=bots_pb2.OK, leases=[lease], version="3")
    session.expire_time.FromSeconds(1_900_000_000)
    session.leases.add(id="job-2", state=bots_pb2.CANCELLED).status.code = 1
    ours = bots.BotSession.decode(session.SerializeToString())
    assert (ours.name, ours.bot_id, ours.version, ours.expire_seconds) == ("/abc", "w1", "3", 1_900_000_000)
    first, second = ours.leases
    assert first.id == "job-1" and first.state == bots.LEASE_ACTIVE
    assert first.payload is not None and first.payload.type_url == TYPE_ACTION
    decoded = Action.decode(first.payload.value)
    assert decoded.command_digest == Digest(H, 12) and decoded.do_not_cache
    assert second.state == bots.LEASE_CANCELLED and second.status is not None and second.status.code == 1


def test_a_missing_blob_status_carries_a_precondition_failure() -> None:
    status = bots.LeaseStatus(9, "the CAS lacks 1 blob", (Digest(H, 5),))
    lease = bots.Lease("job", bots.LEASE_COMPLETED, status=status)
    theirs = bots_pb2.Lease.FromString(lease.encode())
    assert theirs.status.code == 9 and theirs.status.message == "the CAS lacks 1 blob"
    failure = error_details_pb2.PreconditionFailure()
    assert theirs.status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [("MISSING", f"blobs/{H}/5")]
    assert bots.LeaseStatus.decode(theirs.status.SerializeToString()) == status


def test_the_requests_parse_as_the_generated_classes() -> None:
    session = _session()
    create = bots_pb2.CreateBotSessionRequest.FromString(bots.create_bot_session_request("inst", session))
    assert create.parent == "inst" and create.bot_session.bot_id == "w1"
    update = bots_pb2.UpdateBotSessionRequest.FromString(bots.update_bot_session_request(session))
    assert update.name == "inst/123" and update.bot_session.name == "inst/123"
    assert len(update.bot_session.leases) == 2


def test_undecodable_bytes_are_a_wire_error() -> None:
    from pbuild.engine.remote._wire import WireError

    with pytest.raises(WireError):
        bots.BotSession.decode(b"\x0a\xff")  # a length past the end
    with pytest.raises(WireError):
        bots.BotSession.decode(b"\x0a\x02\xff\xfe")  # a name that is not UTF-8


@pytest.mark.parametrize(("workdir", "path"), [("", "../x"), ("pkg", "../../x"), ("", "/etc/x"), ("", "."),
                                               ("", ".pbuild/toolchain/00/blob"), ("../up", "x")])
def test_output_paths_that_leave_the_root_are_refused(workdir: str, path: str) -> None:
    from pbuild.engine.remote.worker.execute import _plan_outputs, _Refused

    with pytest.raises(_Refused, match="leaves the input root|names the root or the toolchain"):
        _plan_outputs(Command(("true",), output_files=(path,), working_directory=workdir))


def test_output_paths_resolve_against_the_working_directory() -> None:
    from pbuild.engine.remote.worker.execute import _plan_outputs

    plan = _plan_outputs(Command(("true",), output_files=("../pbuild-out/pkg/a",),
                                 output_directories=("../pbuild-out/pkg/d",), working_directory="pkg"))
    assert plan.files == (("../pbuild-out/pkg/a", "pbuild-out/pkg/a"),)
    assert plan.dirs == (("../pbuild-out/pkg/d", "pbuild-out/pkg/d"),)
    assert plan.writable == ("pbuild-out/pkg", "pbuild-out/pkg/d")
