"""The REAPI v2 gRPC remote cache against a real BuildGrid (in-memory CAS and action cache)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.remote import RemoteSettings, open_remote
from pbuild.engine.remote import _grpc as grpc_remote
from pbuild.engine.remote._base import to_wire

from tests.support.peers import BuildGrid, buildgrid_server, free_port, silent_server
from tests.support.remotes import OPENED, Warnings, action_result, close_opened

pytestmark = pytest.mark.slow  # BuildGrid takes a few seconds to start


@pytest.fixture(autouse=True)
def _close_remotes() -> Iterator[None]:
    """Close every remote a test opened (their keep-alive sockets) when it ends."""
    yield
    close_opened()


@pytest.fixture(scope="module")
def buildgrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildGrid]:
    # An instance name with a slash: it must prefix ByteStream resource names correctly.
    with buildgrid_server(tmp_path_factory.mktemp("buildgrid"), instance_name="ci/main") as server:
        yield server


def _open(url: str, cache_dir: Path, warnings: Warnings, **kw: object) -> grpc_remote.GrpcRemoteCache:
    kw.setdefault("instance_name", "ci/main")
    remote = open_remote(RemoteSettings(url=url, **kw), cache_dir=str(cache_dir), warn=warnings)  # type: ignore[arg-type]
    assert isinstance(remote, grpc_remote.GrpcRemoteCache), warnings
    OPENED.append(remote)
    return remote


def test_round_trip_small_and_large_blobs(buildgrid: BuildGrid, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(buildgrid.url, tmp_path / "cache", warnings)
    large = os.urandom(6 * 1024 * 1024)  # above the 4 MiB batch limit: ByteStream both ways
    key, result, blobs = action_result(tmp_path / "out", "rt", {"pbuild-out/small": b"small", "pbuild-out/large": large},
                                 executable=frozenset({"pbuild-out/small"}), stdout=b"log")
    assert remote.get_action_result(key) is None
    remote.upload_action(key, result, blobs)
    assert remote.stats().bytes_uploaded == len(large) + 5 + 3

    reader = _open(buildgrid.url, tmp_path / "reader", warnings)
    got = reader.get_action_result(key)
    assert got == result
    for output in got.outputs:
        dest = tmp_path / "ws" / output.path
        assert reader.fetch_blob(output.sha256, output.size, str(dest))
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == output.sha256
    assert got.stdout_sha256 and got.stdout_size == 3
    assert reader.fetch_blob(got.stdout_sha256, got.stdout_size, str(tmp_path / "stdout"))
    assert (tmp_path / "stdout").read_bytes() == b"log"
    assert warnings == []
    remote.close()
    reader.close()


def test_unchanged_rebuild_uploads_nothing(buildgrid: BuildGrid, tmp_path: Path) -> None:
    key, result, blobs = action_result(tmp_path / "out", "unchanged", {"pbuild-out/a": os.urandom(50_000),
                                                                 "pbuild-out/b": os.urandom(10)})
    first = _open(buildgrid.url, tmp_path / "cache", Warnings())
    first.upload_action(key, result, blobs)
    first.close()
    assert first.stats().bytes_uploaded == 50_010

    again = _open(buildgrid.url, tmp_path / "cache", Warnings())  # remembers what is present
    again.upload_action(key, result, blobs)
    assert again.stats().bytes_uploaded == 0 and again.stats().action_results_uploaded == 0

    stranger = _open(buildgrid.url, tmp_path / "other-cache", Warnings())  # asks FindMissingBlobs
    stranger.upload_action(key, result, blobs)
    assert stranger.stats().bytes_uploaded == 0 and stranger.stats().blobs_uploaded == 0
    assert stranger.stats().action_results_uploaded == 1


def test_many_blobs_are_batched_within_the_limits(buildgrid: BuildGrid, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_remote, "_FIND_MISSING_BATCH", 50)
    remote = _open(buildgrid.url, tmp_path / "cache", Warnings())
    remote.rpc.batch_limit = 64 * 1024  # as if the server allowed only 64 KiB per batch
    contents = {f"pbuild-out/f{i:03}": os.urandom(3000 + i) for i in range(120)}
    contents["pbuild-out/mid"] = os.urandom(100_000)  # above that limit: ByteStream
    key, result, blobs = action_result(tmp_path / "out", "batched", contents)
    remote.upload_action(key, result, blobs)
    assert remote.stats().blobs_uploaded == 121 and remote.stats().errors == 0

    reader = _open(buildgrid.url, tmp_path / "reader", Warnings())
    reader.rpc.batch_limit = 64 * 1024
    got = reader.get_action_result(key)
    assert got is not None and len(got.outputs) == 121
    for output in got.outputs:
        assert reader.fetch_blob(output.sha256, output.size, str(tmp_path / "ws" / output.path))
    assert reader.stats().bytes_downloaded == sum(len(v) for v in contents.values())


def test_server_without_action_cache_updates_is_read_only(buildgrid: BuildGrid, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(buildgrid.url, tmp_path / "cache", warnings, instance_name=buildgrid.read_only_instance)
    key, result, blobs = action_result(tmp_path / "out", "ro", {"pbuild-out/f": b"f"})
    remote.upload_action(key, result, blobs)
    assert remote.stats().bytes_uploaded == 0 and remote.stats().action_results_uploaded == 0
    assert len(warnings) == 1 and "update_enabled is false" in warnings[0]
    assert remote.get_action_result(key) is None  # reads still work (and miss)
    assert not remote.stats().disabled


def test_unknown_instance_name_is_refused_at_start(buildgrid: BuildGrid, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = open_remote(RemoteSettings(url=buildgrid.url, instance_name="nope"),
                         cache_dir=str(tmp_path), warn=warnings)
    assert remote is None
    assert len(warnings) == 1 and "building without the remote cache" in warnings[0]


def test_action_result_naming_a_missing_blob_is_not_used(buildgrid: BuildGrid, tmp_path: Path) -> None:
    key, result, blobs = action_result(tmp_path / "out", "dangling", {"pbuild-out/f": os.urandom(64)})
    remote = _open(buildgrid.url, tmp_path / "cache", Warnings())
    # Write the entry without its blob, as a buggy or evicting server could leave it.
    encoded = to_wire(result, {}).encode()
    remote._write_action_result(key, encoded)
    warnings = Warnings()
    reader = _open(buildgrid.url, tmp_path / "reader", warnings)
    got = reader.get_action_result(key)
    dest = tmp_path / "ws" / "f"
    # BuildGrid hides entries whose blobs are gone; a server that does not is caught by the fetch.
    if got is not None:
        assert not reader.fetch_blob(got.outputs[0].sha256, got.outputs[0].size, str(dest))
        assert "missing" in warnings[0] or "NOT_FOUND" in warnings[0]
    assert not dest.exists()
    assert reader.stats().hits + reader.stats().misses == 1


def test_server_down_gives_one_warning_and_no_remote(tmp_path: Path) -> None:
    warnings = Warnings()
    start = time.monotonic()
    remote = open_remote(RemoteSettings(url=f"grpc://127.0.0.1:{free_port()}", retries=1),
                         cache_dir=str(tmp_path), warn=warnings)
    assert remote is None and time.monotonic() - start < 10
    assert len(warnings) == 1 and "cannot reach the server" in warnings[0]


def test_silent_server_times_out(tmp_path: Path) -> None:
    with silent_server() as server:
        warnings = Warnings()
        start = time.monotonic()
        remote = open_remote(RemoteSettings(url=server.url("grpc"), timeout_s=0.5, retries=3),
                             cache_dir=str(tmp_path), warn=warnings)
        elapsed = time.monotonic() - start
    assert remote is None and elapsed < 3
    assert len(warnings) == 1 and "DEADLINE_EXCEEDED" in warnings[0]


def test_server_that_dies_mid_build_is_skipped(tmp_path: Path) -> None:
    warnings = Warnings()
    with buildgrid_server(tmp_path / "bg") as server:
        remote = _open(server.url, tmp_path / "cache", warnings, retries=1, timeout_s=5, instance_name="")
    key, result, blobs = action_result(tmp_path / "out", "dies", {"pbuild-out/f": b"f"})
    for _ in range(4):
        assert remote.get_action_result(key) is None
        remote.upload_action(key, result, blobs)
    assert remote.stats().disabled and len(warnings) == 1


def test_a_damaged_blob_is_written_again_though_find_missing_blobs_lists_it(tmp_path: Path) -> None:
    """Over REAPI, FindMissingBlobs reports a damaged blob as present, so after a
    download failed verification the next upload writes the verified bytes without asking.

    (BuildGrid's disk storage keeps the first copy of a blob it already holds, so this server
    stays damaged; servers that replace on write, as the HTTP caches do, are healed by it.)
    """
    with buildgrid_server(tmp_path / "bg", disk_storage=tmp_path / "bg-cas") as server:
        key, result, blobs = action_result(tmp_path / "out", "heal", {"pbuild-out/f": os.urandom(5000),
                                                                "pbuild-out/g": b"fine"})
        writer = _open(server.url, tmp_path / "writer", Warnings(), instance_name="")
        writer.upload_action(key, result, blobs)
        target = next(o for o in result.outputs if o.path == "pbuild-out/f")
        stored = tmp_path / "bg-cas" / "cas" / "objects" / target.sha256[:2] / target.sha256[2:]
        stored.write_bytes(os.urandom(target.size))  # damaged on the server's disk

        warnings = Warnings()
        reader = _open(server.url, tmp_path / "reader", warnings, instance_name="")
        assert reader.get_action_result(key) == result
        assert not reader.fetch_blob(target.sha256, target.size, str(tmp_path / "ws" / "f"))
        assert len(warnings) == 1 and "wrong content" in warnings[0]
        reader.upload_action(key, result, blobs)  # what the engine does once it rebuilt the output
        stats = reader.stats()
        assert (stats.blobs_uploaded, stats.bytes_uploaded) == (1, target.size)  # the damaged one only
        assert warnings[1:] == []
