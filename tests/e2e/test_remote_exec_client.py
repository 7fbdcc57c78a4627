"""`pbuild build --remote-executor` against the real engine: PostgreSQL, BuildGrid's Execution
service and two real ``pbuild worker`` processes. The client's outputs must be those of a local
build, its statuses and counts must say where the work happened, and a missing executor must
end in one warning and a local build, or in a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.debianlock import single_platform_lock
from tests.support.peers import BuildGridExecution, free_port
from tests.support.runner import Runner, WorkspaceFactory, cache_is_consistent, tree_digest
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.slow

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
        outs = ["count.txt", "tool.sh"]
        cmd = "set -- $(OUTS); wc -c < $< > $1 && printf '#!/bin/sh\\necho hi\\n' > $2 && chmod +x $2"
    """,
    "app/BUILD.toml": """
        [report]
        rule = "genrule"
        srcs = ["//lib:count", "//lib:upper"]
        outs = ["report.txt"]
        cmd = "cat $(SRCS) > $@ && echo done >> $@"
    """,
    "lib/words.txt": "remote execution runs actions elsewhere\n",
}

FAILING: dict[str, str | bytes] = {
    "bad/BUILD.toml": """
        [boom]
        rule = "genrule"
        outs = ["never.txt"]
        cmd = "echo 'the worker says no' >&2; exit 3"
    """,
}


def _summary(events: Path) -> dict[str, int]:
    return next(json.loads(line) for line in events.read_text().splitlines() if '"summary"' in line)


def _statuses(events: Path) -> dict[str, str]:
    return {e["label"]: e["status"] for e in map(json.loads, events.read_text().splitlines())
            if e.get("type") == "action"}


def _leases(pool: list[WorkerProcess]) -> int:
    return sum(len(w.lease_lines()) for w in pool)


def _local_reference(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path, files: dict[str, str | bytes],
                     target: str) -> dict[str, tuple[bytes, int]]:
    ws = workspace(files, name="local")
    result = pbuild("build", target, cwd=ws, cache=tmp_path / "local-cache")
    assert result.code == 0, str(result)
    return tree_digest(ws / "pbuild-out")


def test_a_genrule_chain_built_remotely_is_the_local_build(workspace: WorkspaceFactory, pbuild: Runner,
                                                           tmp_path: Path, grid: BuildGridExecution,
                                                           two_workers: list[WorkerProcess]) -> None:
    expected = _local_reference(workspace, pbuild, tmp_path, FILES, "//app:report")
    ws = workspace(FILES)
    events = tmp_path / "events.json"
    result = pbuild("build", "//app:report", "--remote-executor", grid.url, "--build-event-json", str(events),
                    cwd=ws, cache=tmp_path / "cache")
    assert result.code == 0, str(result)
    assert result.summary.startswith("3 actions: 3 remote executed"), str(result)
    assert "3 executed remotely" in result.err, str(result)
    assert _statuses(events) == {"//lib:upper": "remote_executed", "//lib:count": "remote_executed",
                                 "//app:report": "remote_executed"}
    assert (_summary(events)["remote_executed"], _summary(events)["executed"]) == (3, 0)
    assert tree_digest(ws / "pbuild-out") == expected  # same bytes, same executable bits
    assert (ws / "pbuild-out/lib/tool.sh").stat().st_mode & 0o111
    assert cache_is_consistent(tmp_path / "cache") == []
    assert _leases(two_workers) == 3, [w.text() for w in two_workers]

    # The same build again: the local cache.
    again = pbuild("build", "//app:report", "--remote-executor", grid.url, cwd=ws, cache=tmp_path / "cache")
    assert again.code == 0 and "3 cached" in again.summary, str(again)

    # Another machine: the executor's endpoint is the cache, under the actions' remote keys; nothing runs.
    shutil.rmtree(ws / "pbuild-out")
    events2 = tmp_path / "events2.json"
    other = pbuild("build", "//app:report", "--remote-executor", grid.url, "--build-event-json", str(events2),
                   cwd=ws, cache=tmp_path / "other-cache")
    assert other.code == 0, str(other)
    assert other.summary.startswith("3 actions: 3 remote cached"), str(other)
    assert tree_digest(ws / "pbuild-out") == expected
    assert _leases(two_workers) == 3
    # ... also for a build that has the cache only.
    shutil.rmtree(ws / "pbuild-out")
    cache_only = pbuild("build", "//app:report", "--remote-cache", grid.url, cwd=ws, cache=tmp_path / "third-cache")
    assert cache_only.summary.startswith("3 actions: 3 remote cached"), str(cache_only)
    assert tree_digest(ws / "pbuild-out") == expected


def test_a_failing_command_shows_what_it_printed_on_the_worker(workspace: WorkspaceFactory, pbuild: Runner,
                                                               tmp_path: Path, grid: BuildGridExecution,
                                                               two_workers: list[WorkerProcess]) -> None:
    local = pbuild("build", "//bad:boom", cwd=workspace(FAILING, name="local"), cache=tmp_path / "local-cache")
    ws = workspace(FAILING)
    result = pbuild("build", "//bad:boom", "--remote-executor", grid.url, cwd=ws, cache=tmp_path / "cache")
    assert result.code == local.code != 0
    assert "Genrule failed (exit code 3)" in result.err and "the worker says no" in result.err, str(result)
    # The message is the local one, line for line (the paths of the two workspaces aside).
    assert [line for line in result.err.splitlines() if "worker says no" in line or "failed (" in line] == \
        [line for line in local.err.splitlines() if "worker says no" in line or "failed (" in line]
    assert _leases(two_workers) == 1


def test_executor_down_with_fallback_builds_locally_after_one_warning(workspace: WorkspaceFactory, pbuild: Runner,
                                                                      tmp_path: Path) -> None:
    expected = _local_reference(workspace, pbuild, tmp_path, FILES, "//app:report")
    ws = workspace(FILES)
    down = f"grpc://127.0.0.1:{free_port()}"
    events = tmp_path / "events.json"
    result = pbuild("build", "//app:report", "--remote-executor", down, "--remote-local-fallback",
                    "--remote-cache=", "--remote-timeout", "5", "--build-event-json", str(events),
                    cwd=ws, cache=tmp_path / "cache")
    assert result.code == 0, str(result)
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: remote executor")]
    assert len(warnings) == 1 and "running actions locally" in warnings[0], str(result)
    assert "127.0.0.1" in warnings[0] and "cannot reach" in warnings[0]
    assert result.summary.startswith("3 actions: 3 executed"), str(result)
    assert _summary(events)["remote_executed"] == 0
    assert tree_digest(ws / "pbuild-out") == expected


def test_executor_down_without_fallback_is_a_clear_error(workspace: WorkspaceFactory, pbuild: Runner,
                                                         tmp_path: Path) -> None:
    ws = workspace(FILES)
    down = f"grpc://127.0.0.1:{free_port()}"
    result = pbuild("build", "//lib:upper", "--remote-executor", down, "--remote-cache=", "--remote-timeout", "5",
                    cwd=ws, cache=tmp_path / "cache")
    assert result.code != 0
    assert "Traceback" not in result.err, str(result)
    assert f"remote executor {down} is unavailable" in result.err and "cannot reach" in result.err, str(result)
    assert "--remote-local-fallback" in result.err
    assert not (ws / "pbuild-out/lib/upper.txt").exists()


def test_a_cache_only_server_is_no_executor(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    from tests.support.peers import buildgrid_server

    ws = workspace(FILES)
    with buildgrid_server(tmp_path / "cas") as cas:
        result = pbuild("build", "//lib:upper", "--remote-executor", cas.url, "--remote-local-fallback",
                        cwd=ws, cache=tmp_path / "cache")
    assert result.code == 0, str(result)
    assert "no Execution service" in result.err or "does not execute actions" in result.err, str(result)
    assert "1 executed" in result.summary


def test_outputs_that_are_not_what_the_worker_reported_are_rerun(workspace: WorkspaceFactory, pbuild: Runner,
                                                                 tmp_path: Path, grid: BuildGridExecution) -> None:
    from tests.support.lyingbot import LyingBot

    expected = _local_reference(workspace, pbuild, tmp_path, FILES, "//lib:upper")
    ws = workspace(FILES)
    bot = LyingBot(grid.target).start()
    try:
        result = pbuild("build", "//lib:upper", "--remote-executor", grid.url, cwd=ws, cache=tmp_path / "cache")
    finally:
        bot.stop()
    assert result.code == 0, str(result)
    warnings = [line for line in result.err.splitlines() if "is not what it reported" in line]
    assert len(warnings) == 1, str(result)
    # Once more on the server without its action cache (the liar again), then here.
    assert bot.forged == 2
    assert result.summary.startswith("1 action: 1 executed"), str(result)
    assert tree_digest(ws / "pbuild-out") == expected


def _chain_link(i: int) -> str:
    """Genrule s<i> of a chain, each half a second long, s0 first."""
    srcs = "[]" if i == 0 else f'[":s{i - 1}"]'
    first = "echo start" if i == 0 else "cat $<"
    return f'[s{i}]\nrule = "genrule"\nsrcs = {srcs}\nouts = ["s{i}.txt"]\ncmd = "sleep 0.5; {first} > $@; echo {i} >> $@"\n\n'


def test_an_executor_lost_mid_build_falls_back_once(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path,
                                                    grid: BuildGridExecution, two_workers: list[WorkerProcess]) -> None:
    chain: dict[str, str | bytes] = {"chain/BUILD.toml": "".join(_chain_link(i) for i in range(5))}
    expected = _local_reference(workspace, pbuild, tmp_path, chain, "//chain:s4")
    ws = workspace(chain)
    events = tmp_path / "events.json"
    proc = pbuild.popen("build", "//chain:s4", "--remote-executor", grid.url, "--remote-local-fallback",
                        "--remote-cache=", "--remote-timeout", "5", "--build-event-json", str(events),
                        cwd=ws, cache=tmp_path / "cache")
    from tests.support.workers import wait_until

    # Once the first action's outputs are here (it is done remotely), the executor goes away.
    wait_until(lambda: (ws / "pbuild-out/chain/s0.txt").exists(), 60, "the first remote action")
    grid.stop()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: remote executor")]
    assert len(warnings) == 1 and "running actions locally" in warnings[0], err
    statuses = _statuses(events)
    assert statuses["//chain:s0"] == "remote_executed" and statuses["//chain:s4"] == "executed", statuses
    assert tree_digest(ws / "pbuild-out") == expected


def test_a_worker_killed_mid_build_costs_a_retry_not_the_build(workspace: WorkspaceFactory, pbuild: Runner,
                                                               tmp_path: Path, grid: BuildGridExecution,
                                                               two_workers: list[WorkerProcess]) -> None:
    import signal

    from tests.support.workers import wait_until

    slow: dict[str, str | bytes] = {"slow/BUILD.toml": """
        [nap]
        rule = "genrule"
        outs = ["nap.txt"]
        cmd = "sleep 3; echo rested > $@"
    """}
    ws = workspace(slow)
    events = tmp_path / "events.json"
    proc = pbuild.popen("build", "//slow:nap", "--remote-executor", grid.url, "--build-event-json", str(events),
                        cwd=ws, cache=tmp_path / "cache")
    wait_until(lambda: any(w.busy() for w in two_workers), 60, "a worker running the action")
    victim = next(w for w in two_workers if w.busy())
    victim.signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _statuses(events) == {"//slow:nap": "remote_executed"}
    assert (ws / "pbuild-out/slow/nap.txt").read_text() == "rested\n"
    survivor = next(w for w in two_workers if w is not victim)
    assert len(survivor.lease_lines()) == 1, survivor.text()


def test_a_server_restart_mid_build_is_ridden_out(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path,
                                                  grid: BuildGridExecution,
                                                  two_workers: list[WorkerProcess]) -> None:
    """The server restarts with an empty CAS while the build runs: the client's streams drop,
    its operation is forgotten, the blobs it knew were there are gone. Without fallback, the build
    must still finish remotely: resumed, re-executed, inputs uploaded again."""
    from tests.support.workers import wait_until

    chain: dict[str, str | bytes] = {"chain/BUILD.toml": "".join(_chain_link(i) for i in range(4))}
    expected = _local_reference(workspace, pbuild, tmp_path, chain, "//chain:s3")
    ws = workspace(chain)
    events = tmp_path / "events.json"
    proc = pbuild.popen("build", "//chain:s3", "--remote-executor", grid.url, "--build-event-json", str(events),
                        cwd=ws, cache=tmp_path / "cache")
    wait_until(lambda: _leases(two_workers) >= 1, 60, "the first remote action")
    grid.stop()
    grid.start()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert set(_statuses(events).values()) == {"remote_executed"}, (_statuses(events), err)
    assert tree_digest(ws / "pbuild-out") == expected


def _toolchain_files() -> tuple[dict[str, str | bytes], str]:
    """Genrules on the repository's shell toolchain (Debian packages) and on an image toolchain
    of two layers, with the workspace's [toolchains] naming the shell one."""
    from tests.cli.test_toolchains import MARKED_OS_RELEASE, SHELL_BUILD

    files: dict[str, str | bytes] = {
        "third_party/debian/BUILD.toml": SHELL_BUILD,
        "third_party/debian/debian.lock.json": single_platform_lock(),
        "tc/os-release": MARKED_OS_RELEASE,
        "tc/BUILD.toml": """
            [marker]
            rule = "layer"
            srcs = ["os-release"]
            prefix = "/etc"

            [marked]
            rule = "image"
            layers = ["//third_party/debian:shell", ":marker"]
            cmd = ["/bin/bash"]
        """,
        "g/BUILD.toml": """
            [os]
            rule = "genrule"
            toolchain = "//tc:marked"
            outs = ["os.txt"]
            cmd = "cat /etc/os-release > $@; if test -e /usr/bin/python3.11; then echo host-python >> $@; fi"

            [default]
            rule = "genrule"
            srcs = [":os"]
            outs = ["default.txt"]
            cmd = "bash --version | head -1 > $@; sed --version | head -1 >> $@; cat $< >> $@"
        """,
    }
    toml = '[workspace]\nname = "fixture"\n[toolchains]\nshell = "//third_party/debian:shell"\n'
    return files, toml


def test_actions_on_toolchains_run_remotely_with_the_local_bytes(workspace: WorkspaceFactory, pbuild: Runner,
                                                                 tmp_path: Path, grid: BuildGridExecution,
                                                                 two_workers: list[WorkerProcess]) -> None:
    files, toml = _toolchain_files()
    local_ws = workspace(files, name="local", workspace_toml=toml)
    local = pbuild("build", "//g:default", cwd=local_ws, cache=tmp_path / "local-cache", timeout=600)
    assert local.code == 0, str(local)
    ws = workspace(files, workspace_toml=toml)
    events = tmp_path / "events.json"
    result = pbuild("build", "//g:default", "--remote-executor", grid.url, "--build-event-json", str(events),
                    cwd=ws, cache=tmp_path / "cache", timeout=600)
    assert result.code == 0, str(result)
    statuses = _statuses(events)
    assert statuses["//g:os"] == statuses["//g:default"] == "remote_executed", statuses
    assert tree_digest(ws / "pbuild-out/g") == tree_digest(local_ws / "pbuild-out/g")
    text = (ws / "pbuild-out/g/default.txt").read_text()
    assert text.startswith("GNU bash") and "toolchain fixture" in text and "host-python" not in text
