"""The HTTP remote cache (Bazel's protocol) against a real nginx with WebDAV PUT, and its faults."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.remote import (
    RemoteCache,
    RemoteOutput,
    RemoteSettings,
    open_remote,
)
from pbuild.engine.remote._http import HEAD_THRESHOLD
from pbuild.engine.remote._wire import ActionResult

from tests.support.peers import Nginx, free_port, nginx_cache, silent_server, truncating_http_server
from tests.support.remotes import OPENED, Warnings, action_result, close_opened


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with nginx_cache(tmp_path / "nginx") as server:
        yield server


@pytest.fixture(autouse=True)
def _close_remotes() -> Iterator[None]:
    """Close every remote a test opened (their keep-alive sockets) when it ends."""
    yield
    close_opened()


def _open(url: str, cache_dir: Path, warnings: Warnings, **kw: object) -> RemoteCache:
    remote = open_remote(RemoteSettings(url=url, **kw), cache_dir=str(cache_dir), warn=warnings)  # type: ignore[arg-type]
    assert remote is not None
    OPENED.append(remote)
    return remote


def test_round_trip_stores_reapi_action_results_and_blobs(nginx: Nginx, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(nginx.url(), tmp_path / "cache", warnings)
    key, result, blobs = action_result(tmp_path / "out", "a1", {"pbuild-out/app/x": b"x" * 100,
                                                          "pbuild-out/app/run": os.urandom(200_000)},
                                 executable=frozenset({"pbuild-out/app/run"}), stdout=b"hello\n")
    assert remote.get_action_result(key) is None
    remote.upload_action(key, result, blobs)
    # What nginx stored is the protocol: ac/<key> is an ActionResult, cas/<sha> the bytes.
    stored = (nginx.root / "cache" / "ac" / key).read_bytes()
    decoded = ActionResult.decode(stored)
    assert [(f.path, f.digest.hash, f.is_executable) for f in decoded.output_files] == [
        (o.path, o.sha256, o.executable) for o in sorted(result.outputs, key=lambda o: o.path)]
    for sha, path in blobs.items():
        assert (nginx.root / "cache" / "cas" / sha).read_bytes() == Path(path).read_bytes()

    got = remote.get_action_result(key)
    assert got == result
    for output in got.outputs:
        dest = tmp_path / "ws" / output.path
        assert remote.fetch_blob(output.sha256, output.size, str(dest))
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == output.sha256
    stats = remote.stats()
    assert (stats.hits, stats.misses, stats.errors) == (1, 1, 0)
    assert stats.blobs_uploaded == 3 and stats.action_results_uploaded == 1
    assert stats.blobs_downloaded == 2 and stats.bytes_downloaded == 200_100
    assert warnings == []
    remote.close()


def test_reapi_encoding_matches_buildgrids_generated_messages(nginx: Nginx, tmp_path: Path) -> None:
    remote_execution_pb2 = pytest.importorskip(
        "buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")
    remote = _open(nginx.url(), tmp_path / "cache", Warnings())
    key, result, blobs = action_result(tmp_path / "out", "proto", {"pbuild-out/a": b"1", "pbuild-out/b": b"22"},
                                 executable=frozenset({"pbuild-out/b"}), stdout=b"out")
    remote.upload_action(key, result, blobs)
    message = remote_execution_pb2.ActionResult.FromString((nginx.root / "cache" / "ac" / key).read_bytes())
    assert [(f.path, f.digest.hash, f.digest.size_bytes, f.is_executable) for f in message.output_files] == [
        ("pbuild-out/a", hashlib.sha256(b"1").hexdigest(), 1, False),
        ("pbuild-out/b", hashlib.sha256(b"22").hexdigest(), 2, True)]
    assert message.stdout_digest.hash == hashlib.sha256(b"out").hexdigest()
    assert message.stdout_digest.size_bytes == 3
    assert not message.HasField("stderr_digest")


def test_unchanged_rebuild_uploads_nothing(nginx: Nginx, tmp_path: Path) -> None:
    key, result, blobs = action_result(tmp_path / "out", "same", {"pbuild-out/big": os.urandom(300_000),
                                                            "pbuild-out/small": b"s"})
    first = _open(nginx.url(), tmp_path / "cache", Warnings())
    first.upload_action(key, result, blobs)
    first.close()
    assert first.stats().bytes_uploaded == 300_001
    stamp = os.stat(nginx.root / "cache" / "ac" / key).st_mtime_ns

    # A later build (new process, same cache dir) re-running the same action uploads nothing.
    second = _open(nginx.url(), tmp_path / "cache", Warnings())
    second.upload_action(key, result, blobs)
    assert second.stats().bytes_uploaded == 0 and second.stats().action_results_uploaded == 0
    assert os.stat(nginx.root / "cache" / "ac" / key).st_mtime_ns == stamp

    # Another action sharing the big blob uploads only what is new.
    key2, result2, blobs2 = action_result(tmp_path / "out", "other", {"pbuild-out/big": Path(blobs[result.outputs[0].sha256]).read_bytes(),
                                                                "pbuild-out/new": b"new!"})
    second.upload_action(key2, result2, blobs2)
    assert second.stats().bytes_uploaded == 4

    # A machine with no memory of the remote asks with HEAD before sending large blobs.
    third = _open(nginx.url(), tmp_path / "cache3", Warnings())
    third.upload_action(key2, result2, blobs2)
    assert third.stats().bytes_uploaded <= 4  # the small one may be PUT again, the big one never


def test_wrong_bytes_are_rejected_and_leave_nothing_behind(nginx: Nginx, tmp_path: Path) -> None:
    good = b"the real content"
    sha = hashlib.sha256(good).hexdigest()
    (nginx.root / "cache" / "cas").mkdir(parents=True)
    (nginx.root / "cache" / "cas" / sha).write_bytes(b"something else!!")  # same size, wrong bytes
    warnings = Warnings()
    remote = _open(nginx.url(), tmp_path / "cache", warnings)
    dest = tmp_path / "ws" / "pbuild-out" / "f"
    assert not remote.fetch_blob(sha, len(good), str(dest))
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # no temporary file left over
    assert len(warnings) == 1 and "wrong content" in warnings[0]
    # A body of the wrong size is caught too.
    (nginx.root / "cache" / "cas" / sha).write_bytes(good + b"extra")
    assert not remote.fetch_blob(sha, len(good), str(dest))
    assert not dest.exists() and "more than the expected" in warnings[-1]
    assert remote.stats().errors == 2


def test_truncated_body_is_rejected(tmp_path: Path) -> None:
    payload = os.urandom(10_000)
    sha = hashlib.sha256(payload).hexdigest()
    with truncating_http_server(payload[:4000], announced=len(payload)) as server:
        warnings = Warnings()
        remote = _open(server.url(), tmp_path / "cache", warnings, retries=1)
        dest = tmp_path / "ws" / "out.bin"
        assert not remote.fetch_blob(sha, len(payload), str(dest))
    assert not dest.exists() and os.listdir(dest.parent) == []
    assert len(warnings) == 1
    assert "truncated" in warnings[0] or "interrupted" in warnings[0]


def test_server_errors_warn_once_then_disable_the_remote(nginx: Nginx, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(nginx.url("fail500"), tmp_path / "cache", warnings, retries=2)
    key, result, blobs = action_result(tmp_path / "out", "x", {"pbuild-out/x": b"x"})
    start = time.monotonic()
    for i in range(6):
        assert remote.get_action_result(hashlib.sha256(str(i).encode()).hexdigest()) is None
    remote.upload_action(key, result, blobs)  # never raises
    assert not remote.fetch_blob(result.outputs[0].sha256, 1, str(tmp_path / "dest"))
    assert time.monotonic() - start < 10
    assert len(warnings) == 1 and "HTTP 500" in warnings[0]
    stats = remote.stats()
    assert stats.disabled and stats.errors == 3 and stats.hits == 0


def test_refused_credentials_disable_the_remote_with_a_hint(nginx: Nginx, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(nginx.url("auth"), tmp_path / "cache", warnings)
    assert remote.get_action_result("0" * 64) is None
    assert remote.stats().disabled
    assert len(warnings) == 1 and "401" in warnings[0] and "PBUILD_REMOTE_CREDENTIALS" in warnings[0]

    bad = Warnings()
    wrong = _open(nginx.url("auth", userinfo=f"{nginx.user}:nope"), tmp_path / "cache", bad)
    assert wrong.get_action_result("0" * 64) is None and wrong.stats().disabled
    assert "nope" not in bad[0]  # credentials never reach a message


@pytest.mark.parametrize("how", ["url", "env", "header"])
def test_credentials_from_url_env_or_header(nginx: Nginx, tmp_path: Path, how: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    url = nginx.url("auth")
    headers: tuple[tuple[str, str], ...] = ()
    if how == "url":
        url = nginx.url("auth", userinfo=f"{nginx.user}:{nginx.password}")
    elif how == "env":
        monkeypatch.setenv("PBUILD_REMOTE_CREDENTIALS", f"{nginx.user}:{nginx.password}")
    else:
        token = base64.b64encode(f"{nginx.user}:{nginx.password}".encode()).decode()
        headers = (("Authorization", f"Basic {token}"),)
    warnings = Warnings()
    remote = _open(url, tmp_path / "cache", warnings, headers=headers)
    key, result, blobs = action_result(tmp_path / "out", how, {"pbuild-out/f": b"auth"})
    remote.upload_action(key, result, blobs)
    assert remote.get_action_result(key) == result
    assert warnings == [] and (nginx.root / "auth" / "ac" / key).exists()


def test_timeouts_are_not_retried_and_disable_the_remote(tmp_path: Path) -> None:
    with silent_server() as server:
        warnings = Warnings()
        remote = _open(server.url(), tmp_path / "cache", warnings, timeout_s=0.3, retries=3)
        start = time.monotonic()
        for i in range(5):
            assert remote.get_action_result(hashlib.sha256(str(i).encode()).hexdigest()) is None
        elapsed = time.monotonic() - start
    assert elapsed < 3  # three timeouts of 0.3 s, then no more calls
    assert remote.stats().disabled
    assert len(warnings) == 1 and "no answer within 0.3s" in warnings[0]


def test_server_down_costs_one_warning(tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(f"http://127.0.0.1:{free_port()}/cache", tmp_path / "cache", warnings, retries=2)
    key, result, blobs = action_result(tmp_path / "out", "down", {"pbuild-out/f": b"f"})
    start = time.monotonic()
    for _ in range(4):
        assert remote.get_action_result(key) is None
        remote.upload_action(key, result, blobs)
    assert time.monotonic() - start < 5
    assert len(warnings) == 1 and "continuing with local work" in warnings[0]
    assert remote.stats().disabled


def test_action_result_naming_a_missing_blob_falls_back(nginx: Nginx, tmp_path: Path) -> None:
    key, result, blobs = action_result(tmp_path / "out", "missing", {"pbuild-out/f": b"present?"})
    remote = _open(nginx.url(), tmp_path / "cache", Warnings())
    remote.upload_action(key, result, blobs)
    os.unlink(nginx.root / "cache" / "cas" / result.outputs[0].sha256)  # evicted on the server

    warnings = Warnings()
    reader = _open(nginx.url(), tmp_path / "reader", warnings)
    got = reader.get_action_result(key)
    assert got == result
    dest = tmp_path / "ws" / "f"
    assert not reader.fetch_blob(got.outputs[0].sha256, got.outputs[0].size, str(dest))
    assert not dest.exists()
    assert len(warnings) == 1 and "missing blob" in warnings[0]


def test_read_only_server_turns_uploads_off_but_keeps_reading(nginx: Nginx, tmp_path: Path) -> None:
    key, result, blobs = action_result(tmp_path / "out", "ro", {"pbuild-out/f": b"published"})
    # Publish the entry as CI would, straight into the read-only location's files.
    writer = _open(nginx.url(), tmp_path / "w", Warnings())
    writer.upload_action(key, result, blobs)
    os.rename(nginx.root / "cache", nginx.root / "readonly-data")
    (nginx.root / "readonly").rmdir()
    os.rename(nginx.root / "readonly-data", nginx.root / "readonly")

    warnings = Warnings()
    remote = _open(nginx.url("readonly"), tmp_path / "cache", warnings)
    key2, result2, blobs2 = action_result(tmp_path / "out", "ro2", {"pbuild-out/g": b"new"})
    remote.upload_action(key2, result2, blobs2)
    assert len(warnings) == 1 and "--no-remote-upload" in warnings[0]
    assert remote.get_action_result(key) == result
    assert remote.fetch_blob(result.outputs[0].sha256, result.outputs[0].size, str(tmp_path / "d"))
    assert not remote.stats().disabled


def test_no_remote_upload_sends_nothing(nginx: Nginx, tmp_path: Path) -> None:
    remote = _open(nginx.url(), tmp_path / "cache", Warnings(), upload=False)
    key, result, blobs = action_result(tmp_path / "out", "pr", {"pbuild-out/f": b"from a pull request"})
    remote.upload_action(key, result, blobs)
    assert list((nginx.root / "cache").iterdir()) == []
    assert remote.stats().bytes_uploaded == 0


def test_hostile_action_result_paths_are_refused(nginx: Nginx, tmp_path: Path) -> None:
    from pbuild.engine.remote._wire import Digest, OutputFile

    key = hashlib.sha256(b"evil").hexdigest()
    evil = ActionResult(output_files=(OutputFile("../../etc/passwd", Digest(hashlib.sha256(b"").hexdigest(), 0),
                                                 False),))
    (nginx.root / "cache" / "ac").mkdir(parents=True)
    (nginx.root / "cache" / "ac" / key).write_bytes(evil.encode())
    (nginx.root / "cache" / "ac" / ("1" * 64)).write_bytes(b"\xff\xff\xff garbage")
    warnings = Warnings()
    remote = _open(nginx.url(), tmp_path / "cache", warnings)
    assert remote.get_action_result(key) is None
    assert "unsafe output path" in warnings[0]
    assert remote.get_action_result("1" * 64) is None


def test_concurrent_fetches_share_keep_alive_connections(nginx: Nginx, tmp_path: Path) -> None:
    remote = _open(nginx.url(), tmp_path / "cache", Warnings())
    contents = {f"pbuild-out/f{i}": os.urandom(1000 + i) for i in range(64)}
    key, result, blobs = action_result(tmp_path / "out", "many", contents)
    remote.upload_action(key, result, blobs)
    got = remote.get_action_result(key)
    assert got is not None
    failures: list[str] = []

    def fetch(outputs: tuple[RemoteOutput, ...]) -> None:
        for o in outputs:
            if not remote.fetch_blob(o.sha256, o.size, str(tmp_path / "ws" / o.path)):
                failures.append(o.path)

    threads = [threading.Thread(target=fetch, args=(got.outputs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert remote.stats().blobs_downloaded == 64


def test_empty_blob_needs_no_server(tmp_path: Path) -> None:
    remote = _open(f"http://127.0.0.1:{free_port()}/cache", tmp_path / "cache", Warnings())
    dest = tmp_path / "empty"
    assert remote.fetch_blob(hashlib.sha256(b"").hexdigest(), 0, str(dest))
    assert dest.read_bytes() == b""


def test_unsupported_scheme_warns_and_builds_locally(tmp_path: Path) -> None:
    warnings = Warnings()
    assert open_remote(RemoteSettings(url="ftp://x/y"), cache_dir=str(tmp_path), warn=warnings) is None
    assert "unsupported scheme" in warnings[0]
    assert open_remote(RemoteSettings(url=None), cache_dir=str(tmp_path), warn=warnings) is None


def test_many_missing_blobs_do_not_disable_the_remote_or_flood_warnings(nginx: Nginx, tmp_path: Path) -> None:
    warnings = Warnings()
    remote = _open(nginx.url(), tmp_path / "cache", warnings)
    for i in range(8):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        assert not remote.fetch_blob(sha, 1, str(tmp_path / f"d{i}"))
    assert not remote.stats().disabled and remote.stats().errors == 8
    assert len(warnings) == 5 and warnings[-1].endswith("further ones are not reported")
    key, result, blobs = action_result(tmp_path / "out", "after", {"pbuild-out/f": b"still works"})
    remote.upload_action(key, result, blobs)
    assert remote.get_action_result(key) == result


@pytest.mark.parametrize("who", ["another-client", "the-uploader"])
def test_a_damaged_blob_is_written_over_by_the_next_upload(nginx: Nginx, tmp_path: Path, who: str) -> None:
    """HEAD says a damaged blob exists, and the uploader remembers it as present;
    after a download failed verification, the next upload naming it sends the good bytes anyway."""
    big = os.urandom(HEAD_THRESHOLD + 1000)  # large enough that uploads ask HEAD first
    key, result, blobs = action_result(tmp_path / "out", "heal", {"pbuild-out/big": big, "pbuild-out/small": b"small"})
    writer = _open(nginx.url(), tmp_path / "writer", Warnings())
    writer.upload_action(key, result, blobs)
    target = next(o for o in result.outputs if o.path == "pbuild-out/big")
    server_copy = nginx.root / "cache" / "cas" / target.sha256
    server_copy.write_bytes(bytes(b ^ 0xFF for b in big))  # same size, wrong bytes

    warnings = Warnings()
    reader = writer if who == "the-uploader" else _open(nginx.url(), tmp_path / "reader", warnings)
    reader_warnings = warnings if reader is not writer else None
    assert reader.get_action_result(key) == result
    assert not reader.fetch_blob(target.sha256, target.size, str(tmp_path / "ws" / "big"))
    if reader_warnings is not None:
        assert len(reader_warnings) == 1 and "wrong content" in reader_warnings[0]
    reader.upload_action(key, result, blobs)  # what the engine does once it rebuilt the output
    assert server_copy.read_bytes() == big

    third = _open(nginx.url(), tmp_path / "third", Warnings())
    assert third.fetch_blob(target.sha256, target.size, str(tmp_path / "ws3" / "big"))
    assert (tmp_path / "ws3" / "big").read_bytes() == big


def test_a_damaged_local_copy_is_not_uploaded_over_a_damaged_server_copy(nginx: Nginx, tmp_path: Path) -> None:
    key, result, blobs = action_result(tmp_path / "out", "both", {"pbuild-out/f": b"the content"})
    writer = _open(nginx.url(), tmp_path / "writer", Warnings())
    writer.upload_action(key, result, blobs)
    sha = result.outputs[0].sha256
    (nginx.root / "cache" / "cas" / sha).write_bytes(b"server rot!")
    warnings = Warnings()
    reader = _open(nginx.url(), tmp_path / "reader", warnings)
    assert not reader.fetch_blob(sha, result.outputs[0].size, str(tmp_path / "d"))
    Path(blobs[sha]).write_bytes(b"local rot!!")
    reader.upload_action(key, result, blobs)
    assert (nginx.root / "cache" / "cas" / sha).read_bytes() == b"server rot!"
    assert "does not match its digest either" in warnings[-1]


def test_an_entry_replaced_on_the_server_is_written_again_by_its_uploader(nginx: Nginx, tmp_path: Path) -> None:
    """The uploader remembers its upload; reading something else under that key (say, a poisoned
    entry the engine then refuses) makes its next upload of the key happen again."""
    from pbuild.engine.remote._wire import Digest, OutputFile

    key, result, blobs = action_result(tmp_path / "out", "replaced", {"pbuild-out/f": b"clean"})
    remote = _open(nginx.url(), tmp_path / "cache", Warnings())
    remote.upload_action(key, result, blobs)
    entry = nginx.root / "cache" / "ac" / key
    clean = entry.read_bytes()
    hook = OutputFile(".git/hooks/pre-commit", Digest(result.outputs[0].sha256, result.outputs[0].size), True)
    entry.write_bytes(ActionResult(output_files=(hook,)).encode())
    assert remote.get_action_result(key) is not None  # well formed: only the engine knows the declared outputs
    remote.upload_action(key, result, blobs)
    assert entry.read_bytes() == clean
    remote.close()
    # An untouched entry is still not uploaded twice.
    again = _open(nginx.url(), tmp_path / "cache", Warnings())
    assert again.get_action_result(key) == result
    again.upload_action(key, result, blobs)
    assert again.stats().action_results_uploaded == 0
