"""The command line: shorthand, version, --help, build events, the closing line,
and outputs as read-only hard links into the CAS."""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import re
import stat
import subprocess
from pathlib import Path

import pytest
from pbuild.engine import cli
from pbuild.engine.hashing import digest_file

from tests.support.runner import SUMMARY_LINE, Runner, WorkspaceFactory, assert_user_error

BUILD = {
    "BUILD.toml": '[root]\nrule = "genrule"\nouts = ["root.txt"]\ncmd = "echo root > $@"\n',
    "p/BUILD.toml": """
        [p]
        rule = "genrule"
        srcs = ["in.txt"]
        outs = ["p.txt"]
        cmd = "tr a-z A-Z < $< > $@"

        [tool]
        rule = "genrule"
        outs = ["bin/tool.sh"]
        cmd = "printf '#!/bin/sh\\\\necho tool\\\\n' > $@; chmod 755 $@"

        [both]
        rule = "filegroup"
        srcs = [":p", ":tool"]

        [broken]
        rule = "genrule"
        outs = ["broken.txt"]
        cmd = "exit 1"
    """,
    "p/in.txt": "input\n",
}

ENGINE_COMMANDS = ["build", "run", "test", "query", "clean", "version", "lock", "push", "images", "pull", "rmi", "tag",
                   "save", "load", "up", "down"]
LAUNCHER_COMMANDS = ["ps", "logs", "exec", "stop", "rm"]


# -- help, version, argument errors (in-process: argparse needs no subprocess) ------------------------


@pytest.mark.parametrize("command", ENGINE_COMMANDS)
def test_help_on_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pbuild {command}")
    assert len(out.splitlines()) >= 3


@pytest.mark.parametrize("command", LAUNCHER_COMMANDS)
def test_help_on_launcher_commands(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("pbuild.tools.launcher") is None:
        pytest.skip("the launcher (pbuild.tools.launcher) is not installed")
    try:
        code = cli.main([command, "--help"])
    except SystemExit as exc:  # the launcher's own parser exits; the process exit code is the same
        code = int(exc.code or 0)
    assert code == 0
    assert command in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "stack"), [
    (["ps"], False), (["ps", "-a"], False), (["logs", "web-api-1"], False), (["logs", "-f", "web-api-1"], False),
    (["ps", "//app:web"], True), (["ps", ":web"], True), (["ps", "-f", "compose.yaml"], True),
    (["logs", "-f", "//app:web", "api"], True), (["logs", "--file", "compose.yaml"], True),
    (["logs", "--file=compose.yaml"], True), (["exec", "//x", "sh"], False),
])  # fmt: skip
def test_ps_and_logs_are_the_stacks_only_with_a_label_or_a_file(argv: list[str], stack: bool,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert cli._names_a_stack(argv) == stack
    if argv[0] == "exec":
        return
    try:
        code = cli.main([*argv, "--help"])
    except SystemExit as exc:  # the launcher's own parser exits
        code = int(exc.code or 0)
    assert code == 0
    out = capsys.readouterr().out
    assert ("a stack target" in out) == stack, out  # the stack family's help, else the launcher's


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ENGINE_COMMANDS:
        assert command in out
    assert "`pbuild PATTERN...` is short for `pbuild build PATTERN...`" in out
    assert cli.main(["help"]) == 0


def test_version(pbuild: Runner, tmp_path: Path) -> None:
    result = pbuild("version", cwd=tmp_path)  # no workspace needed
    assert result.code == 0 and result.err == ""
    assert re.fullmatch(r"pbuild \d+\.\d+\.\d+\n", result.out)


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["build"], ["build", "//p:x", "--no-such-flag"],
                                  ["build", "//p:x", "--jobs", "many"]])
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "usage: pbuild" in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err


# -- building from the command line -----------------------------------------------------------------


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Path:
    return workspace(BUILD)


def test_shorthand_and_label_forms(ws: Path, pbuild: Runner) -> None:
    result = pbuild("//p", cwd=ws)  # pbuild PATTERN == pbuild build PATTERN; //p is //p:p
    assert result.code == 0, str(result)
    assert (ws / "pbuild-out" / "p" / "p.txt").read_text() == "INPUT\n"
    assert "[1/1] Genrule //p:p" in result.err  # plain progress lines when not on a terminal
    result = pbuild(":tool", cwd=ws / "p")  # :name from a package folder
    assert result.code == 0, str(result)
    assert (ws / "pbuild-out" / "p" / "bin" / "tool.sh").exists()
    result = pbuild("//:root", "-q", cwd=ws / "p")
    assert result.code == 0 and result.err == "", str(result)  # -q: nothing on success
    assert (ws / "pbuild-out" / "root.txt").read_text() == "root\n"  # the root package: pbuild-out/ itself


def read_events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_events(path: Path, expected: dict[str, str]) -> dict[str, str]:
    """Each action event and the closing summary hold exactly their documented fields, with counts
    that add up; returns label -> key."""
    lines = read_events(path)
    actions, summary = lines[:-1], lines[-1]
    keys = {}
    for event in actions:
        assert set(event) == {"type", "label", "mnemonic", "key", "status", "duration_ms"}, event
        assert event["type"] == "action" and event["mnemonic"] == "Genrule"
        assert event["status"] in ("cached", "remote_cached", "executed", "remote_executed", "failed")
        assert isinstance(event["duration_ms"], int | float) and event["duration_ms"] >= 0
        assert isinstance(event["key"], str) and re.fullmatch(r"[0-9a-f]{32}", event["key"]), event
        keys[str(event["label"])] = event["key"]
    assert {str(e["label"]): e["status"] for e in actions} == expected
    assert set(summary) == {"type", "actions", "cached", "remote_cached", "executed", "remote_executed", "failed",
                            "wall_ms"}
    assert summary["type"] == "summary"
    assert summary["actions"] == len(actions)
    for status in ("cached", "remote_cached", "executed", "remote_executed", "failed"):
        assert summary[status] == sum(1 for e in actions if e["status"] == status)
    assert isinstance(summary["wall_ms"], int | float) and summary["wall_ms"] > 0
    return keys  # type: ignore[return-value]


def test_build_event_json_and_closing_line(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    result = pbuild("build", "//p:both", "//:root", "--build-event-json", str(events), cwd=ws)
    assert result.code == 0, str(result)
    first = check_events(events, {"//p:p": "executed", "//p:tool": "executed", "//:root": "executed"})
    assert re.fullmatch(r"3 actions: 3 executed in \d+\.\d\d s", result.summary)
    assert result.err.rstrip("\n").endswith(result.summary)  # the closing line closes
    result = pbuild("build", "//p:both", "//:root", "--build-event-json", str(events), cwd=ws)
    again = check_events(events, {"//p:p": "cached", "//p:tool": "cached", "//:root": "cached"})
    assert again == first  # same keys from the fast no-op path
    assert re.fullmatch(r"3 actions: 3 cached in \d+\.\d\d s", result.summary)
    (ws / "p" / "in.txt").write_text("changed\n")
    result = pbuild("build", "//p:both", "//:root", "--build-event-json", str(events), cwd=ws)
    changed = check_events(events, {"//p:p": "executed", "//p:tool": "cached", "//:root": "cached"})
    assert changed["//p:p"] != first["//p:p"]
    assert re.fullmatch(r"3 actions: 2 cached, 1 executed in \d+\.\d\d s", result.summary)
    result = pbuild("build", "//p:broken", "--build-event-json", str(events), cwd=ws)
    assert_user_error(result, 1, "target //p:broken")
    check_events(events, {"//p:broken": "failed"})
    assert "1 action: 1 failed" in result.summary


def test_outputs_are_read_only_hard_links_into_the_cas(ws: Path, pbuild: Runner) -> None:
    result = pbuild("build", "//p:both", cwd=ws)
    assert result.code == 0, str(result)
    out_dir = ws / "pbuild-out" / "p"
    for rel, executable in (("p.txt", False), ("bin/tool.sh", True)):
        out = out_dir / rel
        digest, _ = digest_file(str(out))
        blob = pbuild.cache / "cas" / digest[:2] / (digest + (".x" if executable else ""))
        st, blob_st = out.stat(), blob.stat()
        assert (st.st_ino, st.st_dev) == (blob_st.st_ino, blob_st.st_dev), rel  # a hard link, not a copy
        assert st.st_nlink >= 2
        assert stat.S_IMODE(st.st_mode) & 0o222 == 0, rel  # nobody may write through it into the cache
        assert stat.S_IMODE(st.st_mode) == (0o555 if executable else 0o444)
    assert subprocess.run([str(out_dir / "bin" / "tool.sh")], capture_output=True, text=True).stdout == "tool\n"
    # a user who deletes or replaces an output gets it back on the next build, and the cache is untouched
    (out_dir / "p.txt").unlink()
    (out_dir / "bin" / "tool.sh").unlink()
    (out_dir / "bin" / "tool.sh").write_text("user's own\n")
    result = pbuild("build", "//p:both", cwd=ws)
    assert result.code == 0 and "2 cached" in result.summary, str(result)
    assert (out_dir / "p.txt").read_text() == "INPUT\n"
    assert (out_dir / "bin" / "tool.sh").read_text() == "#!/bin/sh\necho tool\n"


def test_live_progress_on_a_terminal(ws: Path, pbuild: Runner) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(pbuild.command(["build", "//p:both"]), cwd=ws, env=pbuild.env(),
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    assert "[1/2] Genrule" not in text  # the plain lines are for pipes and files
    assert SUMMARY_LINE.search(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)), text
    assert (ws / "pbuild-out" / "p" / "p.txt").exists()


def test_unwritable_event_file_is_a_user_error(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    result = pbuild("build", "//p", "--build-event-json", str(tmp_path / "missing" / "ev.json"), cwd=ws)
    assert_user_error(result, 2, "--build-event-json", str(tmp_path / "missing"))


def test_run_refuses_a_target_that_is_not_runnable(ws: Path, pbuild: Runner) -> None:
    result = pbuild("run", "//p", cwd=ws)
    assert_user_error(result, 2, "//p:p (a genrule) cannot be run", "hint:")


def test_a_reader_that_leaves_early_is_not_a_traceback(tmp_path: Path) -> None:
    """`pbuild query //... | true`: a reader gone before pbuild writes ends pbuild quietly."""
    import subprocess
    import sys

    (tmp_path / "WORKSPACE.toml").write_text("")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "BUILD.toml").write_text("".join(
        f'[t{i}]\nrule = "filegroup"\nsrcs = []\n' for i in range(50)))
    command = f"{sys.executable} -m pbuild.engine.cli query //... | true"
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


@pytest.mark.parametrize(("command", "jobs"), [("build", "0"), ("build", "-3"), ("test", "0"), ("run", "-1")])
def test_jobs_must_be_at_least_one(command: str, jobs: str, ws: Path, pbuild: Runner) -> None:
    """--jobs below 1 is refused as bad input by every command, before the scheduler or a rule sees it."""
    result = pbuild(command, "--jobs", jobs, "//p", cwd=ws)  # before the target: run passes what follows on
    assert result.code == (125 if command == "run" else 2), str(result)  # run's own errors: Docker's 125
    assert f"argument -j/--jobs: must be 1 or more, got {jobs}" in result.err, str(result)
    assert "Traceback" not in result.err and not (ws / "pbuild-out").exists()
