"""A stack's records: JSON round trip, names, folders and volumes, live processes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from pbuild.tools.launcher.state import process_start_time
from pbuild.tools.stack import state
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.state import ServiceRecord, StackRecord


def test_record_round_trip_and_service_updates() -> None:
    api = ServiceRecord("api", "web-api-1", "10.89.0.2/24", "c" * 64, "sha256:h", "running", "healthy", None, 2,
                        ("127.0.0.1:1->2/tcp",))  # fmt: skip
    record = StackRecord("web", "//app:web", 10, 20, (api,))
    assert StackRecord.from_json(record.to_json()) == record
    db = ServiceRecord("db", "web-db-1", "10.89.0.3/24")
    record = record.with_service(db).with_service(ServiceRecord("api", "web-api-1", "10.89.0.2/24"))
    assert [s.name for s in record.services] == ["api", "db"] and record.services[0].status == "created"
    assert record.without_service("api").service("api") is None


def test_the_stack_folder_is_private_and_names_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBUILD_RUNTIME_DIR", str(tmp_path / "run"))
    assert state.stack_dir("web") == str(tmp_path / "run/stacks/web")
    for bad in ("Web", "../x", "", "-web", "a/b"):
        with pytest.raises(StackError):
            state.stack_dir(bad)
    with state.locked():
        assert (tmp_path / "run/stacks").stat().st_mode & 0o777 == 0o700
    os.chmod(tmp_path / "run/stacks", 0o755)
    state.ensure_private(str(tmp_path / "run/stacks"))  # tightened again
    assert (tmp_path / "run/stacks").stat().st_mode & 0o777 == 0o700
    assert state.all_stacks() == [] and state.find_by_origin("//x:y") is None
    directory = tmp_path / "run/stacks/web"
    directory.mkdir()
    state.save(str(directory), StackRecord("web", "//app:web"))
    assert state.find_by_origin("//app:web") == (str(directory), StackRecord("web", "//app:web"))


def test_named_volumes_live_beside_the_layer_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBUILD_LAYER_STORE", str(tmp_path / "data/layers"))
    path = state.ensure_volume("web", "cache")
    assert path == str(tmp_path / "data/volumes/web_cache") and os.path.isdir(path)
    assert (tmp_path / "data/volumes").stat().st_mode & 0o777 == 0o700
    with pytest.raises(StackError):
        state.volume_dir("web", "../up")
    assert state.remove_volumes("web", ["cache", "never-made"]) == ["web_cache"]
    assert not os.path.exists(path)


def test_a_zombie_or_a_recycled_pid_is_not_alive() -> None:
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None and state.process_running(me, start)
    assert not state.process_running(me, start + 1)
    child = subprocess.Popen(["true"])
    child_start = process_start_time(child.pid)
    assert child_start is not None
    time.sleep(0.2)  # it exited; not reaped yet: a zombie
    assert not state.process_running(child.pid, child_start)
    child.wait()
