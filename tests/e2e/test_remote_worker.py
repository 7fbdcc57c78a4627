"""``pbuild worker`` against the real engine: PostgreSQL, BuildGrid's Execution and Bots
services, and real worker processes. Actions are submitted with BuildGrid's own generated protos
(tests/support/reapi_client.py), so the worker is checked against the standard's encoding."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.peers import BuildGridExecution, Postgres, buildgrid_execution_server
from tests.support.reapi_client import ReapiClient, re_pb2
from tests.support.workers import WorkerProcess, wait_until, workers

pytestmark = pytest.mark.slow

CODE_INVALID_ARGUMENT = 3


@pytest.fixture
def client(grid: BuildGridExecution) -> Iterator[ReapiClient]:
    c = ReapiClient(grid.target)
    yield c
    c.close()


def _tree_files(client: ReapiClient, tree_digest: re_pb2.Digest) -> dict[str, tuple[bytes, bool]]:
    tree = re_pb2.Tree.FromString(client.read(tree_digest))
    by_digest = {hashlib.sha256(child.SerializeToString()).hexdigest(): child for child in tree.children}
    out: dict[str, tuple[bytes, bool]] = {}

    def walk(directory: re_pb2.Directory, prefix: str) -> None:
        for f in directory.files:
            out[prefix + f.name] = (client.read(f.digest), f.is_executable)
        for d in directory.directories:
            walk(by_digest[d.digest.hash], prefix + d.name + "/")

    walk(tree.root, "")
    return out


def test_an_action_runs_on_a_worker_with_its_outputs_tree_and_stdout(tmp_path: Path, grid: BuildGridExecution,
                                                                     client: ReapiClient) -> None:
    root = client.directory({"pkg/in.txt": b"hello\n", "pkg/tool.sh": (b"#!/bin/sh\necho from-tool\n", True)})
    script = ("cat in.txt > ../out/copy.txt && ./tool.sh && cp tool.sh ../out/tool && "
              "mkdir -p ../out/d/sub && echo deep > ../out/d/sub/f && printf x > ../out/d/x.sh && "
              "chmod +x ../out/d/x.sh")
    action = client.action(["/bin/sh", "-c", script], root, outputs=("../out/copy.txt", "../out/tool"),
                           output_dirs=("../out/d",), workdir="pkg")
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        response = client.run(action)
        assert response.status.code == 0, response.status
        result = response.result
        assert result.exit_code == 0
        files = {f.path: f for f in result.output_files}
        assert set(files) == {"../out/copy.txt", "../out/tool"}
        assert client.read(files["../out/copy.txt"].digest) == b"hello\n"
        assert not files["../out/copy.txt"].is_executable
        assert files["../out/tool"].is_executable
        (out_dir,) = result.output_directories
        assert out_dir.path == "../out/d"
        assert _tree_files(client, out_dir.tree_digest) == {"sub/f": (b"deep\n", False), "x.sh": (b"x", True)}
        assert client.read(result.stdout_digest) == b"from-tool\n"
        assert result.execution_metadata.worker == "w1"
        meta = result.execution_metadata
        assert (meta.input_fetch_start_timestamp.ToNanoseconds() <= meta.execution_start_timestamp.ToNanoseconds()
                <= meta.execution_completed_timestamp.ToNanoseconds()
                <= meta.output_upload_completed_timestamp.ToNanoseconds())
        first = w1.wait_for(" exit 0 in ")
        assert "input bytes" in first and f"action {action.hash[:16]}/{action.size_bytes}" in first

        # A second action on the same inputs downloads none of them again: the worker's own CAS.
        again = client.action(["/bin/sh", "-c", "cat in.txt"], root, workdir="pkg")
        client.upload_all()
        second = client.run(again)
        assert second.result.exit_code == 0 and client.read(second.result.stdout_digest) == b"hello\n"
        wait_until(lambda: len(w1.lease_lines()) == 2, 10, "the second lease's log line")
        assert " for 0 input bytes" in w1.lease_lines()[1], w1.lease_lines()


def test_a_failing_command_returns_its_exit_code_and_stderr(tmp_path: Path, grid: BuildGridExecution,
                                                            client: ReapiClient) -> None:
    action = client.action(["/bin/sh", "-c", "echo it broke >&2; exit 3"], client.directory({}))
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        response = client.run(action)
    assert response.status.code == 0
    assert response.result.exit_code == 3
    assert client.read(response.result.stderr_digest) == b"it broke\n"
    assert " exit 3 in " in w1.text()


def test_two_workers_share_a_queue(tmp_path: Path, grid: BuildGridExecution, client: ReapiClient) -> None:
    root = client.directory({})
    actions = [client.action(["/bin/sh", "-c", f"sleep 0.7; echo {i}"], root) for i in range(6)]
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1", "w2")) as pair:
        started = time.monotonic()
        submitted = [client.submit(a) for a in actions]
        responses = [client.wait(s) for s in submitted]
        elapsed = time.monotonic() - started
        assert [client.read(r.result.stdout_digest) for r in responses] == [f"{i}\n".encode() for i in range(6)]
        ran_on = {r.result.execution_metadata.worker for r in responses}
        assert ran_on == {"w1", "w2"}, ran_on
        assert all(len(w.lease_lines()) >= 1 for w in pair)
    assert elapsed < 6 * 0.7 + 8, elapsed  # not one after the other on one worker plus slack


def test_an_undeclared_file_or_the_network_fails_as_locally(tmp_path: Path, grid: BuildGridExecution,
                                                           client: ReapiClient) -> None:
    secret = client.directory({"secret.txt": b"not for others\n"})
    first = client.action(["/bin/sh", "-c", "cat secret.txt"], secret)
    peek = client.action(["/bin/sh", "-c", "cat secret.txt"], client.directory({"other.txt": b"x"}))
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        assert client.run(first).result.exit_code == 0
        # Undeclared: not in this action's input root; nor through the worker's CAS, which holds it.
        cas_blob = next(p for p in (w1.cache / "worker" / "cas").rglob("*") if p.is_file()
                        and p.read_bytes() == b"not for others\n")
        through_cas = client.action(["/bin/cat", str(cas_blob)], client.directory({}))
        net = client.action(["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {grid.port}), 3)"],
                            client.directory({}))
        client.upload_all()
        peeked = client.run(peek).result
        assert peeked.exit_code != 0 and b"No such file" in client.read(peeked.stderr_digest)
        cas = client.run(through_cas).result
        assert cas.exit_code != 0, "an action read the worker's CAS"
        networked = client.run(net).result
        assert networked.exit_code != 0
        assert b"Network is unreachable" in client.read(networked.stderr_digest) or \
            b"Connection refused" in client.read(networked.stderr_digest)


def test_a_hostile_directory_is_refused_and_nothing_is_written_outside(tmp_path: Path, grid: BuildGridExecution,
                                                                       client: ReapiClient) -> None:
    payload = client.put(b"escaped\n")
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        # "../../../../x" would land in this test's folder, beside the worker's cache: looked for below.
        for number, name in enumerate(("../x", "a/b", "..", "../../../../x", "link")):
            hostile = re_pb2.Directory()
            if name == "link":  # a symlink out of the root
                hostile.symlinks.add(name=name, target="../../etc")
            else:
                hostile.files.add(name=name, digest=payload)
            root = client.raw_directory(hostile)
            action = client.action(["/bin/true"], root, salt=name.encode())
            client.upload_all()
            response = client.run(action)
            assert response.status.code == CODE_INVALID_ARGUMENT, response.status
            assert repr(name) in response.status.message and "refused" in response.status.message
            wait_until(lambda n=number: len([line for line in w1.lease_lines() if " failed: " in line]) == n + 1,
                       10, "the lease's log line")
            assert f"failed: action {action.hash[:12]}" in w1.lease_lines()[-1]
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.name in ("x", "b") and p.read_bytes() == b"escaped\n"]
    assert not leaked, leaked


def test_a_worker_killed_mid_action_its_lease_runs_on_the_other(tmp_path: Path, grid: BuildGridExecution,
                                                                client: ReapiClient) -> None:
    action = client.action(["/bin/sh", "-c", "sleep 2; echo done > out/result"], client.directory({"out/": b""}),
                           outputs=("out/result",))
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1", "w2")) as pair:
        submitted = client.submit(action)
        wait_until(lambda: any(w.busy() for w in pair), 20, "a worker to start the action")
        victim = next(w for w in pair if w.busy())
        survivor = next(w for w in pair if w is not victim)
        victim.signal(signal.SIGKILL)
        response = client.wait(submitted, timeout_s=60)
        assert response.status.code == 0, response.status
        assert response.result.exit_code == 0
        assert response.result.execution_metadata.worker == survivor.name
        (out,) = response.result.output_files
        assert client.read(out.digest) == b"done\n"
        assert survivor.lease_lines()


@pytest.mark.parametrize("down_s", [1, 10], ids=["quick", "past-the-keepalive"])
def test_a_buildgrid_restart_the_worker_carries_on(tmp_path: Path, grid: BuildGridExecution,
                                                   client: ReapiClient, down_s: float) -> None:
    """Down longer than the bots' keepalive (8 s here), the session expired: the worker makes a
    new one. Either way it never crashes and takes the next action."""
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        before = client.action(["/bin/echo", "before"], client.directory({}))
        client.upload_all()
        assert client.run(before).result.exit_code == 0
        grid.stop()
        time.sleep(down_s)
        grid.start()
        assert w1.proc.poll() is None, w1.text()
        client.upload_all()  # the CAS was in memory: the client uploads again
        after = client.action(["/bin/echo", "after"], client.directory({}))
        client.upload_all()
        response = client.run(after, timeout_s=90)
        assert response.result.exit_code == 0 and client.read(response.result.stdout_digest) == b"after\n"
        assert w1.proc.poll() is None
        assert "Traceback" not in w1.text(), w1.text()
        sessions = [line for line in w1.text().splitlines() if ": up to 1 lease(s) at once" in line]
        # Down briefly, the session may or may not have outlived the restart (the server dates
        # its expiry from the start of the last long-poll); down past the keepalive it did not.
        assert len(sessions) == 2 if down_s > 8 else len(sessions) in (1, 2), w1.text()


def test_sigterm_finishes_the_running_action_then_exits(tmp_path: Path, grid: BuildGridExecution,
                                                        client: ReapiClient) -> None:
    action = client.action(["/bin/sh", "-c", "sleep 1.5; echo finished"], client.directory({}))
    client.upload_all()
    w1 = WorkerProcess(tmp_path, grid.url, "w1", grace_s=30)
    try:
        w1.wait_for(" session ")
        submitted = client.submit(action)
        wait_until(w1.busy, 20, "the worker to start the action")
        w1.signal(signal.SIGTERM)
        response = client.wait(submitted, timeout_s=30)
        assert response.status.code == 0 and client.read(response.result.stdout_digest) == b"finished\n"
        assert w1.proc.wait(timeout=15) == 0, w1.text()
    finally:
        w1.stop()


def test_sigterm_past_the_grace_period_hands_the_lease_back(tmp_path: Path, grid: BuildGridExecution,
                                                            client: ReapiClient) -> None:
    action = client.action(["/bin/sh", "-c", "sleep 4; echo finished"], client.directory({}))
    client.upload_all()
    w1 = WorkerProcess(tmp_path, grid.url, "w1", grace_s=0.5)
    try:
        w1.wait_for(" session ")
        submitted = client.submit(action)
        wait_until(w1.busy, 20, "the worker to start the action")
        w1.signal(signal.SIGTERM)
        assert w1.proc.wait(timeout=15) == 0, w1.text()
        assert "handed back" in w1.text()
        # The server gives the lease to the next worker.
        with workers(tmp_path, grid.url, ("w2",)):
            response = client.wait(submitted, timeout_s=60)
        assert response.result.execution_metadata.worker == "w2"
        assert client.read(response.result.stdout_digest) == b"finished\n"
    finally:
        w1.stop()


def test_a_cancelled_operation_kills_the_sandbox(tmp_path: Path, grid: BuildGridExecution,
                                                 client: ReapiClient) -> None:
    from buildgrid._protos.google.longrunning import operations_pb2, operations_pb2_grpc

    action = client.action(["/bin/sh", "-c", "sleep 30"], client.directory({}))
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        submitted = client.submit(action)
        wait_until(w1.busy, 20, "the worker to start the action")
        operations_pb2_grpc.OperationsStub(client.channel).CancelOperation(
            operations_pb2.CancelOperationRequest(name=submitted.operation), timeout=10)
        wait_until(lambda: not w1.busy(), 15, "the sandbox to be killed")
        assert "its sandbox was killed" in w1.wait_for("cancelled by the server")
        assert w1.proc.poll() is None


def test_the_worker_refuses_a_bad_executor_url(tmp_path: Path) -> None:
    import subprocess

    from tests.support.runner import PBUILD, base_env

    proc = subprocess.run([*PBUILD, "worker", "--remote-executor", "http://127.0.0.1:1"], capture_output=True,
                          text=True, env=base_env(tmp_path), timeout=30)
    assert proc.returncode != 0
    assert "expected grpc://HOST:PORT" in proc.stderr and "Traceback" not in proc.stderr


def _layer_files(raw_tar: bytes, *, diff_id: str | None = None) -> tuple[bytes, bytes]:
    """A toolchain layer as pbuild's action format carries it: the gzipped blob and its sidecar."""
    import gzip
    import json

    blob = gzip.compress(raw_tar, mtime=0)
    meta = {"diff_id": diff_id or f"sha256:{hashlib.sha256(raw_tar).hexdigest()}",
            "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"}
    return blob, json.dumps(meta).encode()


def test_an_action_on_a_toolchain_runs_on_its_tree(tmp_path: Path, grid: BuildGridExecution,
                                                   client: ReapiClient) -> None:
    from tests.support.testimages import busybox_layer, file, tar_layer

    base_blob, base_meta = _layer_files(busybox_layer())
    top_blob, top_meta = _layer_files(tar_layer([file("etc/greeting", "hello from the toolchain\n")]))
    files: dict[str, bytes | tuple[bytes, bool]] = {
        ".pbuild/toolchain/00/blob": base_blob, ".pbuild/toolchain/00/meta": base_meta,
        ".pbuild/toolchain/01/blob": top_blob, ".pbuild/toolchain/01/meta": top_meta,
        "pkg/in.txt": b"input\n",
    }
    root = client.directory(files)
    script = "cat /etc/greeting in.txt; test -e /usr/bin/python3 && echo host-visible; ls /execroot"
    first = client.action(["/bin/sh", "-c", script], root, workdir="pkg")
    again = client.action(["/bin/sh", "-c", "cat /etc/greeting"], root, workdir="pkg")
    client.upload_all()
    with workers(tmp_path, grid.url, ("w1",)) as (w1,):
        response = client.run(first)
        assert response.status.code == 0, response.status
        assert response.result.exit_code == 0, client.read(response.result.stderr_digest)
        # The tree is the action's /, the host's root is not; the layers are not in the exec root.
        assert client.read(response.result.stdout_digest) == b"hello from the toolchain\ninput\npkg\n"
        assert client.run(again).result.exit_code == 0
        wait_until(lambda: len(w1.lease_lines()) == 2, 10, "the second lease")
        assert " for 0 input bytes" in w1.lease_lines()[1]
        trees = [p for p in (w1.cache / "toolchains").iterdir() if p.is_dir()]
        assert len(trees) == 1, trees  # unpacked once, for both actions

        damaged_blob, damaged_meta = _layer_files(tar_layer([file("x", "y")]), diff_id="sha256:" + "0" * 64)
        bad_root = client.directory({".pbuild/toolchain/00/blob": damaged_blob,
                                     ".pbuild/toolchain/00/meta": damaged_meta})
        bad = client.action(["/bin/true"], bad_root)
        client.upload_all()
        refused = client.run(bad)
        assert refused.status.code == CODE_INVALID_ARGUMENT
        assert "toolchain layers cannot be unpacked" in refused.status.message


def test_a_worker_serves_a_named_instance(tmp_path: Path, postgres: Postgres, fresh_db: str) -> None:
    with buildgrid_execution_server(tmp_path / "bg", postgres, database=fresh_db, instance_name="ci/main") as grid:
        client = ReapiClient(grid.target, "ci/main")
        action = client.action(["/bin/echo", "on ci/main"], client.directory({}))
        client.upload_all()
        with workers(tmp_path, grid.url, ("w1",), instance_name="ci/main") as (w1,):
            response = client.run(action)
            assert client.read(response.result.stdout_digest) == b"on ci/main\n"
            assert "session ci/main/" in w1.text()
        client.close()


def test_a_refusing_server_is_retried_with_backoff_not_in_a_loop(tmp_path: Path) -> None:
    """A server that answers every call RESOURCE_EXHAUSTED (gRPC's own refusal when its
    concurrent-RPC limit is reached): the worker backs off between attempts and logs a few lines."""
    from concurrent import futures

    import grpc

    calls: list[str] = []

    class Refuse(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
                calls.append(details.method)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
                return b""  # not reached: abort raises

            return grpc.unary_unary_rpc_method_handler(refuse)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[Refuse()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        worker = WorkerProcess(tmp_path, f"grpc://127.0.0.1:{port}", "refused")
        try:
            worker.wait_for("RESOURCE_EXHAUSTED")
            time.sleep(4)
            assert worker.proc.poll() is None, worker.text()  # server trouble never ends the worker
        finally:
            worker.stop()
    finally:
        server.stop(0)
    # Backoff from 0.1 s doubling to its cap: about ten attempts in four seconds, never hundreds.
    assert 2 <= len(calls) <= 25, len(calls)
    assert len(worker.text().splitlines()) <= 5, worker.text()
