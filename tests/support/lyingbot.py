"""A test-only bot on BuildGrid's own Bots protos that completes every lease with a forged
result: exit code 0 and, for each output the Command asks for, a digest of bytes it never
uploaded. It stands for a worker whose reported output digests do not match its bytes, which
an honest ``pbuild worker`` cannot be made to produce; the client must catch it at download.

It runs in a thread of the test process until :meth:`LyingBot.stop`, counting the leases it
forged, and advertises pbuild's platform properties for this host so it gets pbuild's actions.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import grpc  # noqa: E402
import pytest  # noqa: E402

bots_pb2 = pytest.importorskip("buildgrid._protos.google.devtools.remoteworkers.v1test2.bots_pb2")
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc  # noqa: E402
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2_grpc, worker_pb2  # noqa: E402
from pbuild.engine.hashing import host_fingerprint  # noqa: E402
from pbuild.engine.remote import actionformat  # noqa: E402


class LyingBot:
    """Start with :meth:`start`; ``forged`` counts the leases it answered."""

    def __init__(self, target: str, name: str = "liar", instance_name: str = "") -> None:
        self.channel = grpc.insecure_channel(target)
        self.bots = bots_pb2_grpc.BotsStub(self.channel)
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.name = name
        self.instance = instance_name
        self.forged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lying-bot", daemon=True)

    def start(self) -> LyingBot:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
        self.channel.close()

    def _worker(self) -> worker_pb2.Worker:
        props = actionformat.platform_properties(host_fingerprint())
        device = worker_pb2.Device(handle=self.name, properties=[worker_pb2.Device.Property(key=k, value=v)
                                                                 for k, v in props])
        return worker_pb2.Worker(devices=[device])

    def _read(self, digest: re_pb2.Digest) -> bytes:
        response = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(instance_name=self.instance,
                                                                        digests=[digest]), timeout=10)
        return bytes(response.responses[0].data)

    def _forge(self, lease: bots_pb2.Lease) -> bots_pb2.Lease:
        action = re_pb2.Action()
        if lease.payload.Is(re_pb2.Action.DESCRIPTOR):
            lease.payload.Unpack(action)
        else:
            digest = re_pb2.Digest()
            lease.payload.Unpack(digest)
            action = re_pb2.Action.FromString(self._read(digest))
        command = re_pb2.Command.FromString(self._read(action.command_digest))
        result = re_pb2.ActionResult(exit_code=0)
        for path in command.output_files or command.output_paths:
            forged = f"forged bytes of {path}".encode()
            # The digest of bytes that were never uploaded: what the worker claims is not there.
            result.output_files.add(path=path, digest=re_pb2.Digest(hash=hashlib.sha256(forged).hexdigest(),
                                                                    size_bytes=len(forged)))
        done = bots_pb2.Lease(id=lease.id, state=bots_pb2.LeaseState.COMPLETED)
        done.result.Pack(result)
        self.forged += 1
        return done

    def _loop(self) -> None:
        session = self.bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
            parent=self.instance, bot_session=bots_pb2.BotSession(bot_id=self.name, status=bots_pb2.BotStatus.OK,
                                                                  worker=self._worker())), timeout=10)
        while not self._stop.is_set():
            leases = []
            for lease in session.leases:
                if lease.state in (bots_pb2.LeaseState.PENDING, bots_pb2.LeaseState.ACTIVE):
                    leases.append(self._forge(lease))
            session.ClearField("leases")
            session.leases.extend(leases)
            try:
                session = self.bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
                    name=session.name, bot_session=session), timeout=15)  # past BuildGrid's long poll
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    time.sleep(0.2)
        session.status = bots_pb2.BotStatus.BOT_TERMINATING
        session.ClearField("leases")
        try:
            self.bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session),
                                       timeout=5)
        except grpc.RpcError:
            pass
