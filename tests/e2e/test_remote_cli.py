"""The remote cache through the real CLI: `pbuild build --remote-cache ...` on fixture workspaces."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.peers import Nginx, buildgrid_server, free_port, nginx_cache
from tests.support.runner import Runner, WorkspaceFactory, cache_is_consistent, tree_digest

FILES: dict[str, str | bytes] = {
    "lib/BUILD.toml": """
        [upper]
        rule = "genrule"
        srcs = ["words.txt"]
        outs = ["upper.txt"]
        cmd = "tr a-z A-Z < $< > $@"

        [count]
        rule = "genrule"
        srcs = [":upper"]
        outs = ["count.txt"]
        cmd = "wc -c < $< > $@"
    """,
    "lib/words.txt": "remote caches make builds fast\n",
}


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with nginx_cache(tmp_path / "nginx", access_log=True) as server:
        yield server


def _events(path: Path) -> dict[str, int]:
    return next(json.loads(line) for line in path.read_text().splitlines() if '"summary"' in line)


def _puts(server: Nginx) -> int:
    return sum(1 for r in server.requests() if r[0] == "PUT")


def test_a_fresh_machine_builds_from_the_remote(workspace: WorkspaceFactory, pbuild: Runner, nginx: Nginx,
                                                tmp_path: Path) -> None:
    ws = workspace(FILES)
    first = pbuild("build", "//lib:count", "--remote-cache", nginx.url(), cwd=ws)
    assert first.code == 0, str(first)
    assert "2 executed" in first.summary
    outputs = tree_digest(ws / "pbuild-out")
    assert _puts(nginx) == 4  # two blobs, two action results

    # Nothing changed: local hits, nothing uploaded.
    again = pbuild("build", "//lib:count", "--remote-cache", nginx.url(), cwd=ws)
    assert "2 cached" in again.summary and _puts(nginx) == 4

    # Another machine: empty cache, no outputs. Everything comes from the remote.
    shutil.rmtree(ws / "pbuild-out")
    events = tmp_path / "events.json"
    other = pbuild("build", "//lib:count", "--remote-cache", nginx.url(), "--build-event-json", str(events),
                   cwd=ws, cache=tmp_path / "other-cache")
    assert other.code == 0, str(other)
    assert other.summary.startswith("2 actions: 2 remote cached")
    summary = _events(events)
    assert (summary["remote_cached"], summary["executed"]) == (2, 0)
    assert tree_digest(ws / "pbuild-out") == outputs
    assert cache_is_consistent(tmp_path / "other-cache") == []
    assert _puts(nginx) == 4


def test_pull_requests_read_without_writing(workspace: WorkspaceFactory, pbuild: Runner, nginx: Nginx) -> None:
    ws = workspace(FILES)
    result = pbuild("build", "//lib:count", "--remote-cache", nginx.url(), "--no-remote-upload", cwd=ws)
    assert result.code == 0, str(result)
    assert _puts(nginx) == 0 and list((nginx.root / "cache").iterdir()) == []
    assert sum(1 for r in nginx.requests() if r[0] == "GET") == 2  # it did look


def test_settings_from_workspace_toml_and_the_flag_that_turns_them_off(
        workspace: WorkspaceFactory, pbuild: Runner, nginx: Nginx) -> None:
    ws = workspace(FILES, workspace_toml=f'[workspace]\nname = "fixture"\n\n[remote]\nurl = "{nginx.url()}"\n'
                                         f"upload = true\ntimeout = 10\n")
    assert pbuild("build", "//lib:upper", cwd=ws).code == 0
    assert _puts(nginx) == 2
    shutil.rmtree(ws / "pbuild-out")
    off = pbuild("build", "//lib:upper", "--remote-cache=", cwd=ws, cache=ws.parent / "c2")
    assert "1 executed" in off.summary
    assert len(nginx.requests()) == 3  # the first build's GET and 2 PUTs; nothing from the second


def test_a_remote_that_is_down_costs_one_warning(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace(FILES)
    result = pbuild("build", "//lib:count", "--remote-cache", f"http://127.0.0.1:{free_port()}/cache", cwd=ws)
    assert result.code == 0, str(result)
    assert "2 executed" in result.summary
    warnings = [line for line in result.err.splitlines() if line.startswith("remote cache")]
    assert len(warnings) == 1 and "continuing with local work" in warnings[0], result.err
    assert "Traceback" not in result.err


def test_damaged_remote_blob_is_rejected_and_rebuilt_locally(workspace: WorkspaceFactory, pbuild: Runner,
                                                             nginx: Nginx, tmp_path: Path) -> None:
    ws = workspace(FILES)
    assert pbuild("build", "//lib:upper", "--remote-cache", nginx.url(), cwd=ws).code == 0
    good = (ws / "pbuild-out" / "lib" / "upper.txt").read_bytes()
    sha = hashlib.sha256(good).hexdigest()
    (nginx.root / "cache" / "cas" / sha).write_bytes(b"X" * len(good))  # same size, wrong bytes
    shutil.rmtree(ws / "pbuild-out")

    result = pbuild("build", "//lib:upper", "--remote-cache", nginx.url(), cwd=ws, cache=tmp_path / "fresh")
    assert result.code == 0, str(result)
    assert "1 executed" in result.summary
    assert "wrong content" in result.err
    assert (ws / "pbuild-out" / "lib" / "upper.txt").read_bytes() == good
    assert cache_is_consistent(tmp_path / "fresh") == []


def test_bad_remote_settings_are_input_errors(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace(FILES, workspace_toml='[workspace]\nname = "fixture"\n\n[remote]\nupload = "sometimes"\n')
    result = pbuild("build", "//lib:upper", cwd=ws)
    assert result.code == 2 and "expected true or false" in result.err and "Traceback" not in result.err
    flag = pbuild("build", "//lib:upper", "--remote-cache", "ftp://nowhere", cwd=workspace(FILES, name="ws2"))
    assert flag.code == 2 and "not usable" in flag.err


@pytest.mark.slow
def test_grpc_round_trip_through_buildgrid(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    ws = workspace(FILES)
    with buildgrid_server(tmp_path / "bg") as grid:
        first = pbuild("build", "//lib:count", "--remote-cache", grid.url, cwd=ws)
        assert first.code == 0 and "2 executed" in first.summary, str(first)
        outputs = tree_digest(ws / "pbuild-out")
        shutil.rmtree(ws / "pbuild-out")
        other = pbuild("build", "//lib:count", "--remote-cache", grid.url, cwd=ws, cache=tmp_path / "other")
    assert other.summary.startswith("2 actions: 2 remote cached"), str(other)
    assert tree_digest(ws / "pbuild-out") == outputs


def test_a_damaged_remote_blob_is_replaced_so_the_next_machine_gets_a_hit(
        workspace: WorkspaceFactory, pbuild: Runner, nginx: Nginx, tmp_path: Path) -> None:
    """The machine that caught a damaged remote blob uploads the bytes it rebuilt over it."""
    ws = workspace({"big/BUILD.toml": """
        [big]
        rule = "genrule"
        outs = ["big.txt"]
        cmd = "seq 1 20000 > $@"
    """})  # about 100 KiB: large enough that uploads ask HEAD before sending
    assert pbuild("build", "//big", "--remote-cache", nginx.url(), cwd=ws).code == 0
    good = (ws / "pbuild-out" / "big" / "big.txt").read_bytes()
    server_copy = nginx.root / "cache" / "cas" / hashlib.sha256(good).hexdigest()
    server_copy.write_bytes(b"X" * len(good))

    shutil.rmtree(ws / "pbuild-out")
    second = pbuild("build", "//big", "--remote-cache", nginx.url(), cwd=ws, cache=tmp_path / "second")
    assert second.code == 0 and "1 executed" in second.summary, str(second)
    assert "wrong content" in second.err
    assert server_copy.read_bytes() == good

    shutil.rmtree(ws / "pbuild-out")
    third = pbuild("build", "//big", "--remote-cache", nginx.url(), cwd=ws, cache=tmp_path / "third")
    assert third.summary.startswith("1 action: 1 remote cached"), str(third)
    assert "wrong content" not in third.err and "warning" not in third.err
    assert (ws / "pbuild-out" / "big" / "big.txt").read_bytes() == good
