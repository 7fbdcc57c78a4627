"""Executing actions: failures (a failing command, an unwritten declared output), --jobs, --keep-going,
Ctrl-C, and the sandbox as a genrule sees it."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.runner import (
    GOOD_PACKAGE,
    SETPRIV_NOBODY,
    GuardedBuild,
    Runner,
    WorkspaceFactory,
    assert_user_error,
    cache_is_consistent,
    chown_tree,
    write_tree,
)


def genrule(name: str, cmd: str, outs: str = "", srcs: str = "[]") -> str:
    return f'[{name}]\nrule = "genrule"\nsrcs = {srcs}\nouts = ["{outs or name + ".txt"}"]\ncmd = """{cmd}"""\n\n'


def events(path: Path) -> tuple[dict[str, str], dict[str, object]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    statuses = {e["label"]: e["status"] for e in lines if e["type"] == "action"}
    summary = lines[-1]
    assert summary["type"] == "summary"
    return statuses, summary


# -- failed actions (exit 1) --------------------------------------------------------------------


def test_failing_command_shows_command_and_stderr(workspace: WorkspaceFactory, pbuild: Runner,
                                                  guarded: GuardedBuild) -> None:
    root = workspace({
        **GOOD_PACKAGE,
        "p/BUILD.toml": genrule("failing", "echo progress on stdout; echo 'compiler says no' >&2; exit 3",
                                srcs='["in.txt"]'),
        "p/in.txt": "x\n",
    })
    guard = guarded(root)
    result = pbuild("build", "//p:failing", cwd=root)
    assert_user_error(result, 1, "target //p:failing", "Genrule failed (exit code 3)",
                      "/bin/bash -c 'echo progress on stdout;", "compiler says no", "progress on stdout",
                      "build failed: 1 action")
    assert "1 action: 1 failed" in result.summary
    assert not (root / "pbuild-out" / "p").exists()
    guard.assert_intact()


def test_a_killed_command_says_which_signal(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    # $$ is a $ in a genrule: the shell runs `sh -c 'kill -9 $$'; exit $?`
    root = workspace({"p/BUILD.toml": genrule("killed", "sh -c 'kill -9 $$$$'; exit $$?")})
    assert_user_error(pbuild("build", "//p:killed", cwd=root), 1, "killed by signal 9")


def test_a_command_that_kills_itself_fails(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": genrule("killed", "kill -9 $$$$; echo survived > $@")})
    assert_user_error(pbuild("build", "//p:killed", cwd=root), 1, "killed by signal 9")


def test_unwritten_declared_output(workspace: WorkspaceFactory, pbuild: Runner, guarded: GuardedBuild) -> None:
    root = workspace({
        **GOOD_PACKAGE,
        "p/BUILD.toml": '[two]\nrule = "genrule"\nouts = ["a.txt", "b.txt"]\ncmd = "set -- $(OUTS); echo > $1"\n',
    })
    guard = guarded(root)
    result = pbuild("build", "//p:two", cwd=root)
    assert_user_error(result, 1, "target //p:two", "did not write its declared output pbuild-out/p/b.txt",
                      "hint: the command must write every declared output")
    assert not (root / "pbuild-out" / "p" / "a.txt").exists()  # a failed action publishes nothing
    guard.assert_intact()
    # and nothing half-done was cached: fixing the command builds both outputs
    (root / "p" / "BUILD.toml").write_text(
        '[two]\nrule = "genrule"\nouts = ["a.txt", "b.txt"]\ncmd = "set -- $(OUTS); echo a > $1; echo b > $2"\n')
    result = pbuild("build", "//p:two", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "b.txt").read_text() == "b\n"


def test_a_failure_is_not_cached(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": genrule("flaky", "test -e /tmp/never-there-$$ && echo > $@")})
    for _ in range(2):
        assert_user_error(pbuild("build", "//p:flaky", cwd=root), 1, "Genrule failed (exit code 1)")


# -- the sandbox, as a genrule sees it ----------------------------------------------------------------

SANDBOX_PKG = {
    "p/BUILD.toml": (
        genrule("undeclared", "cat secret.txt > $@", srcs='["in.txt"]')
        + genrule("network", "echo > /dev/tcp/1.1.1.1/53 && echo > $@")
        + genrule("env", "env | sort | grep -v '^_=' > $@; pwd >> $@; umask >> $@; id -u >> $@; hostname >> $@")
        + genrule("write_source", "echo hacked > in.txt && echo > $@", srcs='["in.txt"]')
        + genrule("ok", "cat $< > $@", srcs='["in.txt"]')
    ),
    "p/in.txt": "declared\n",
    "p/secret.txt": "secret\n",
}


def check_sandbox(root: Path, pbuild: Runner, **kw: object) -> None:
    result = pbuild("build", "//p:undeclared", cwd=root, **kw)  # type: ignore[arg-type]
    assert_user_error(result, 1, "secret.txt: No such file or directory",
                      "it reads p/secret.txt, which exists in the workspace but is not a declared input",
                      "add it to srcs")
    result = pbuild("build", "//p:network", cwd=root, **kw)  # type: ignore[arg-type]
    assert_user_error(result, 1, "Network is unreachable", "actions run without network access")
    result = pbuild("build", "//p:write_source", cwd=root, **kw)  # type: ignore[arg-type]
    assert_user_error(result, 1, "in.txt: Read-only file system")
    assert (root / "p" / "in.txt").read_text() == "declared\n"  # sources are read-only in the sandbox
    result = pbuild("build", "//p:ok", "//p:env", cwd=root, **kw)  # type: ignore[arg-type]
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "ok.txt").read_text() == "declared\n"
    env_lines = (root / "pbuild-out" / "p" / "env.txt").read_text().splitlines()
    env = dict(line.split("=", 1) for line in env_lines if "=" in line)
    assert env["LANG"] == "C.UTF-8" and env["TZ"] == "UTC" and env["HOME"] == "/tmp"
    assert env["SOURCE_DATE_EPOCH"] == "0" and env["PYTHONHASHSEED"] == "0"
    assert env["PATH"].startswith("/usr/local/sbin:") and "pytest" not in " ".join(env)
    assert str(root) not in (root / "pbuild-out" / "p" / "env.txt").read_text()


def test_sandbox_as_seen_by_a_genrule(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    check_sandbox(workspace(SANDBOX_PKG), pbuild)


def test_sandbox_works_for_an_unprivileged_user(nobody_dir: Path, pbuild: Runner) -> None:
    root = nobody_dir / "ws"
    write_tree(root, {"WORKSPACE.toml": "", **SANDBOX_PKG})
    chown_tree(root, 65534, 65534)
    cache = nobody_dir / "cache"
    env = {"HOME": str(nobody_dir), "XDG_CONFIG_HOME": str(nobody_dir / "config")}
    probe = subprocess.run([*SETPRIV_NOBODY, sys.executable, "-c", "import pbuild.engine.cli, xxhash"],
                           cwd=nobody_dir, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("the venv is not readable by uid 65534")
    check_sandbox(root, pbuild, cache=cache, env=env, prefix=SETPRIV_NOBODY)
    result = pbuild("build", "//p:ok", cwd=root, cache=cache, env=env, prefix=SETPRIV_NOBODY)
    assert result.code == 0 and "1 cached" in result.summary, str(result)
    out = root / "pbuild-out" / "p" / "ok.txt"
    assert out.stat().st_uid == 65534
    # the output is read-only for its owner too: writing fails for a non-root user
    write = subprocess.run([*SETPRIV_NOBODY, "sh", "-c", f"echo x >> {out}"], capture_output=True, text=True)
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert out.read_text() == "declared\n"
    assert cache_is_consistent(cache) == []


# -- --jobs, fail fast, --keep-going ---------------------------------------------------------------


def test_jobs_limits_parallel_actions(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    """Each action records when it ran (the clock is shared with the sandbox): with -j 1 no two
    intervals overlap; with -j 2 some do, and never more than two at once."""
    sleeper = "date +%s%N > $@; sleep 1; date +%s%N >> $@"
    root = workspace({"p/BUILD.toml": "".join(genrule(f"s{i}", sleeper) for i in range(4))})

    def most_at_once(jobs: str) -> int:
        result = pbuild("build", "//p:all", "--jobs", jobs, cwd=root)
        assert result.code == 0 and "4 executed" in result.summary, str(result)
        spans = [tuple(int(t) for t in (root / "pbuild-out" / "p" / f"s{i}.txt").read_text().split())
                 for i in range(4)]
        assert pbuild("clean", "--expunge", cwd=root).code == 0
        return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)

    assert most_at_once("1") == 1
    assert most_at_once("2") == 2


FAIL_GRAPH = {
    "p/BUILD.toml": (
        genrule("fail", "echo broken >&2; exit 1")
        + "".join(genrule(f"ok{i}", f"sleep 0.1; echo {i} > $@") for i in range(4))
        + genrule("after", "cat $< > $@", srcs='[":fail"]')
    ),
}


def live_processes_of_group(pgid: int) -> list[str]:
    """Processes of process group ``pgid`` that are not zombies (a zombie waits only to be reaped)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(entry)
    return found


def test_fail_fast_stops_at_the_first_failure(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    root = workspace(FAIL_GRAPH)
    ev = tmp_path / "ev.json"
    result = pbuild("build", "//p:all", "-j", "1", "--build-event-json", str(ev), cwd=root)
    assert_user_error(result, 1, "target //p:fail", "broken", "not run", "--keep-going")
    statuses, summary = events(ev)
    assert statuses == {"//p:fail": "failed"}
    assert summary["failed"] == 1 and summary["executed"] == 0
    assert not (root / "pbuild-out" / "p").exists()


def test_keep_going_builds_all_that_can_be_built(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    root = workspace(FAIL_GRAPH)
    ev = tmp_path / "ev.json"
    result = pbuild("build", "//p:all", "-j", "1", "--keep-going", "--build-event-json", str(ev), cwd=root)
    assert_user_error(result, 1, "target //p:fail", "1 action(s) failed")
    statuses, summary = events(ev)
    assert statuses == {"//p:fail": "failed", **{f"//p:ok{i}": "executed" for i in range(4)}}
    assert "//p:after" not in statuses  # its input failed
    assert (summary["failed"], summary["executed"]) == (1, 4)
    assert sorted(p.name for p in (root / "pbuild-out" / "p").iterdir()) == [f"ok{i}.txt" for i in range(4)]
    # -k is the short form, and the outputs built before are now cached
    result = pbuild("build", "//p:all", "-k", "--build-event-json", str(ev), cwd=root)
    statuses, _ = events(ev)
    assert statuses["//p:ok0"] == "cached" and statuses["//p:fail"] == "failed"


# -- Ctrl-C ------------------------------------------------------------------------------------------


def processes_running(argv: list[str]) -> list[int]:
    """Pids of live processes (in any namespace or session) whose command line is exactly ``argv``."""
    wanted = "\0".join(argv) + "\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline") as handle:
                cmdline = handle.read()
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline == wanted and state != "Z":
            found.append(int(entry))
    return found


def sigint_to_a_worker_thread(pid: int) -> None:
    """Deliver SIGINT to a thread of ``pid`` other than its main thread, as the kernel may do with a
    process-directed signal (it happened under load: the main thread then never saw the Ctrl-C)."""
    tgkill = {"x86_64": 234, "aarch64": 131}.get(os.uname().machine)
    if tgkill is None:
        pytest.skip("tgkill's syscall number is not known for this architecture")
    libc = ctypes.CDLL(None, use_errno=True)
    threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert threads, "pbuild runs no worker thread"
    assert libc.syscall(tgkill, pid, threads[0], signal.SIGINT) == 0, os.strerror(ctypes.get_errno())


@pytest.mark.parametrize("how", [
    "terminal-ctrl-c",
    "sigint-to-pbuild-only",
    "sigint-on-a-worker-thread",
])
def test_ctrl_c_stops_quickly_and_leaves_the_cache_consistent(workspace: WorkspaceFactory, pbuild: Runner,
                                                              how: str, tmp_path: Path) -> None:
    delay = f"{60 + (hash(str(tmp_path)) % 1000) / 1000:.3f}"  # a sleep this test alone runs
    root = workspace({
        "p/BUILD.toml": genrule("quick", "echo quick > $@")
        + genrule("slow", "sleep $(cat $<); echo slow > $@", srcs='["delay.txt"]'),
        "p/delay.txt": delay + "\n",
    })
    proc = pbuild.popen("build", "//p:all", "-j", "2", cwd=root, start_new_session=True)
    deadline = time.monotonic() + 30
    # wait until the slow action sleeps in its sandbox (the quick one is done by then, too)
    while not processes_running(["sleep", delay]) or not (root / "pbuild-out" / "p" / "quick.txt").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"the build did not get under way: {proc.communicate()}")
        time.sleep(0.05)
    started = time.monotonic()
    if how == "terminal-ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    elif how == "sigint-to-pbuild-only":
        os.kill(proc.pid, signal.SIGINT)  # a supervisor signalling pbuild alone: its sandboxes must die too
    else:
        sigint_to_a_worker_thread(proc.pid)
    try:
        out, err = proc.communicate(timeout=8)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    took = time.monotonic() - started
    assert proc.returncode == 130, err
    assert took < 5, f"took {took:.1f} s to stop"
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(0.2)
    assert processes_running(["sleep", delay]) == []  # no sandboxed process outlives the build
    assert live_processes_of_group(proc.pid) == []
    assert cache_is_consistent(pbuild.cache) == []
    (root / "p" / "delay.txt").write_text("0\n")
    result = pbuild("build", "//p:all", cwd=root)
    assert result.code == 0, str(result)
    assert "1 cached, 1 executed" in result.summary
    assert (root / "pbuild-out" / "p" / "slow.txt").read_text() == "slow\n"
    assert not list((pbuild.cache / "tmp").iterdir())  # the interrupted build's temp dir is gone


def test_exec_root_holds_declared_inputs_with_their_modes(workspace: WorkspaceFactory, pbuild: Runner,
                                                          tmp_path: Path) -> None:
    root = workspace({
        "tools/BUILD.toml": '[tool]\nrule = "genrule"\nouts = ["bin/tool"]\n'
                            'cmd = "printf \'#!/bin/sh\\\\necho made by tool\\\\n\' > $@; chmod +x $@"\n',
        "p/BUILD.toml": """
            [use]
            rule = "genrule"
            srcs = ["data/in.txt"]
            tools = ["//tools:tool"]
            outs = ["deep/dir/out.txt", "top.txt"]
            cmd = "set -- $(OUTS); $(location //tools:tool) > $1; cat $< >> $1; ls -R .. | grep -c . > $2"
        """,
        "p/data/in.txt": "data\n",
        "p/data/undeclared.txt": "x\n",
        "p/secret.txt": "secret\n",
    })
    result = pbuild("build", "//p:use", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "deep" / "dir" / "out.txt").read_text() == "made by tool\ndata\n"
    # the workspace's own path is hidden in the sandbox: absolute paths do not get around the declared inputs
    (root / "p" / "BUILD.toml").write_text(genrule("abs", f"cat {root}/p/secret.txt > $@"))
    result = pbuild("build", "//p:abs", cwd=root)
    assert_user_error(result, 1, "secret.txt: No such file or directory")
    (root / "p" / "BUILD.toml").write_text(genrule("cache", f"ls {pbuild.cache}/cas > $@"))
    assert_user_error(pbuild("build", "//p:cache", cwd=root), 1, "No such file or directory")


def test_a_vanished_source_names_the_target(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": genrule("g", "cp $< $@", srcs='["in.txt"]'), "p/in.txt": "x\n"})
    assert pbuild("build", "//p:g", cwd=root).code == 0
    (root / "p" / "in.txt").unlink()
    result = pbuild("build", "//p:g", cwd=root)
    assert result.code in (1, 2), str(result)
    assert_user_error(result, result.code, "p/in.txt", "target //p:g")


def test_an_unreadable_source_is_a_user_error(nobody_dir: Path, pbuild: Runner) -> None:
    root = nobody_dir / "ws"
    write_tree(root, {"WORKSPACE.toml": "", "p/BUILD.toml": genrule("g", "cp $< $@", srcs='["in.txt"]'),
                      "p/in.txt": "x\n"})
    chown_tree(root, 65534, 65534)
    (root / "p" / "in.txt").chmod(0)
    env = {"HOME": str(nobody_dir), "XDG_CONFIG_HOME": str(nobody_dir / "config")}
    result = pbuild("build", "//p:g", cwd=root, cache=nobody_dir / "cache", env=env, prefix=SETPRIV_NOBODY)
    assert result.code in (1, 2), str(result)
    assert_user_error(result, result.code, "p/in.txt", "Permission denied", "target //p:g")


def test_genrule_paths_are_shell_quoted(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({
        "p/BUILD.toml": """
            [one]
            rule = "genrule"
            srcs = ["in file.txt"]
            outs = ["out file.txt"]
            cmd = "cat $< > $@"

            [all]
            rule = "genrule"
            srcs = { glob = ["*.txt"] }
            outs = ["all.txt"]
            cmd = "cat $(SRCS) > $@"
        """,
        "p/in file.txt": "spaced\n",
        "p/a;echo injected.txt": "semicolon\n",
    })
    result = pbuild("build", "//p:one", "//p:all", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "out file.txt").read_text() == "spaced\n"
    assert (root / "pbuild-out" / "p" / "all.txt").read_text() == "semicolon\nspaced\n"


def test_undeclared_read_is_explained_for_exec_root_paths(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": genrule("py", "python3 script.py > $@"), "p/script.py": "print(1)\n"})
    result = pbuild("build", "//p:py", cwd=root)
    assert_user_error(result, 1, "can't open file",
                      "it reads p/script.py, which exists in the workspace but is not a declared input")


def test_an_output_symlink_cannot_read_around_the_sandbox(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"  # the cache is tmp_path/cache: the exec root's outputs sit 6 levels below tmp_path
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": genrule("leak", "ln -s ../../../../../../ws/p/secret.txt $@"),
        "p/secret.txt": "TOP SECRET\n",
    })
    result = pbuild("build", "//p:leak", cwd=root)
    leaked = root / "pbuild-out" / "p" / "leak.txt"
    assert not (leaked.exists() and "TOP SECRET" in leaked.read_text()), "an undeclared file reached an output"
    assert_user_error(result, 1, "target //p:leak", "symlink")


@pytest.mark.parametrize("link", ["nowhere", "/execroot/p/in.txt"])
def test_a_broken_output_symlink_is_a_build_failure(workspace: WorkspaceFactory, pbuild: Runner, link: str) -> None:
    root = workspace({"p/BUILD.toml": genrule("l", f"ln -s {link} $@", srcs='["in.txt"]'), "p/in.txt": "x\n"})
    assert_user_error(pbuild("build", "//p:l", cwd=root), 1, "target //p:l", "symlink")
