"""The project's own job through remote execution: ``//app:image`` and ``//app:program_test``
built with ``--remote-executor`` against BuildGrid and two real ``pbuild worker``s give the image
digest of a local build. The test runs on a worker on the Python toolchain, which travels as its
Debian layer files (the worker has no tools of its own for it); the image's actions are
in-process and run here, with the same digests either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace
from tests.support.peers import BuildGridExecution
from tests.support.runner import Runner
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow


def _statuses(events: Path) -> dict[tuple[str, str], str]:
    return {(e["label"], e["mnemonic"]): e["status"] for e in map(json.loads, events.read_text().splitlines())
            if e.get("type") == "action"}


def test_app_image_through_remote_execution_has_the_local_digest(tmp_path: Path, pbuild: Runner,
                                                                 grid: BuildGridExecution,
                                                                 two_workers: list[WorkerProcess]) -> None:
    local = clone_app_workspace(tmp_path / "local")
    built = pbuild("build", "//app:image", cwd=local, cache=tmp_path / "cache-local", timeout=900)
    assert built.code == 0, built

    remote = clone_app_workspace(tmp_path / "remote")
    events = tmp_path / "events.json"
    # A cold cache of its own: the downloads and layers are made here again (in-process actions),
    # the test runs on a worker.
    args = ("--remote-executor", grid.url, "--build-event-json", str(events))
    tested = pbuild("test", "//app:program_test", *args, cwd=remote, cache=tmp_path / "cache-remote", timeout=900)
    assert tested.code == 0, tested
    assert "PASSED (remote)" in tested.out + tested.err, tested
    ran = _statuses(events)
    remote_run = [key for key, status in ran.items() if status == "remote_executed"]
    assert any(label == "//app:program_test" for label, _ in remote_run), ran
    leases = [line for w in two_workers for line in w.lease_lines()]
    assert leases and all("exit 0" in line for line in leases), leases

    image = pbuild("build", "//app:image", *args, cwd=remote, cache=tmp_path / "cache-remote", timeout=900)
    assert image.code == 0, image
    assert (remote / "pbuild-out/app/image/digest").read_bytes() == (local / "pbuild-out/app/image/digest").read_bytes()
    assert (remote / "pbuild-out/app/image/image.tar").read_bytes() \
        == (local / "pbuild-out/app/image/image.tar").read_bytes()
