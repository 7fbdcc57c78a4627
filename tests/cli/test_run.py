"""`pbuild run` of a program (engine/run.py): one workspace lookup per command, the user's umask
handed to the program as a value, the no-op path starting the recorded run plan, and the plan a
typed record that survives the stamp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pbuild.engine.api import Label
from pbuild.engine.run import ImagePlan, ProgramPlan, RunPlan, ToolchainRoot, plan_from_data

from tests.support.runner import Runner, WorkspaceFactory

SH_BINARY = '''
from pbuild.engine.api import DefaultInfo, RunInfo, attr, rule


@rule("sh_binary", doc="A shell script to run.", attrs={"script": attr.string("The script's text.", required=True)})
def sh_binary(ctx):
    script = ctx.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(script, ctx.attr.script)
    return [DefaultInfo(files=(script,)), RunInfo(argv=("/bin/sh", script), env={"GREETING": "hi"})]


RULES = [sh_binary]
'''

# Counts the reads of WORKSPACE.toml of one `pbuild run` in a file (the run ends in exec, so the
# count cannot wait for the process to exit).
PROBE = '''
import sys
import pbuild.engine.workspace as workspace

read = workspace.read_workspace_config


def counted(root):
    with open(sys.argv[1], "a") as log:
        log.write(root + "\\n")
    return read(root)


workspace.read_workspace_config = counted
from pbuild.engine.cli import main

sys.exit(main(sys.argv[2:]))
'''


@pytest.fixture
def run_ws(workspace: WorkspaceFactory) -> Path:
    script = 'echo "$GREETING $*"\numask\necho "in $BUILD_WORKING_DIRECTORY"\n'
    return workspace({
        "rules.py": SH_BINARY,
        "p/BUILD.toml": f"[hello]\nrule = \"sh_binary\"\nscript = '''{script}'''\n",
    }, workspace_toml='[workspace]\nplugins = ["rules.py"]\n')


def run_counted(pbuild: Runner, ws: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$@"', "sh", sys.executable, "-c", PROBE, str(log), "run", *args],
        cwd=ws / "p", env=pbuild.env(), capture_output=True, text=True, timeout=120,
    )


def test_one_run_reads_the_workspace_once(run_ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    for attempt in ("builds", "replays the stamp"):
        log = tmp_path / f"reads-{attempt}"
        result = run_counted(pbuild, run_ws, log, ":hello", "--", "a", "b")
        assert result.returncode == 0, (attempt, result.stderr)
        # the program's umask is the user's (027), not the 022 pbuild builds with
        assert result.stdout == f"hi a b\n0027\nin {run_ws / 'p'}\n", (attempt, result.stdout)
        assert log.read_text().splitlines() == [str(run_ws)], attempt


def test_a_failed_start_is_a_message(run_ws: Path, pbuild: Runner) -> None:
    rules = run_ws / "rules.py"
    rules.write_text(rules.read_text().replace('"/bin/sh"', '"/no/such/sh"'))
    result = pbuild("run", "//p:hello", cwd=run_ws)
    assert result.code == 1 and "cannot start /no/such/sh" in result.err and "Traceback" not in result.err, str(result)


@pytest.mark.parametrize("plan", [
    ImagePlan(layout="/ws/pbuild-out/app/image/oci"),
    ProgramPlan(argv=("/bin/sh", "/ws/x.sh"), env=(("A", "1"),), keep_dashdash=False, root="/ws"),
    ProgramPlan(argv=("/usr/bin/python3",), env=(), keep_dashdash=True, root="/ws",
                toolchain=ToolchainRoot(tree="/cache/trees/abc", label=str(Label("tc", "py")))),
])
def test_a_run_plan_survives_the_stamp(plan: RunPlan) -> None:
    import marshal

    assert plan_from_data(marshal.loads(marshal.dumps(plan.to_data()))) == plan


def test_a_stamp_of_another_format_is_no_plan() -> None:
    assert plan_from_data(("exec", ["/bin/sh"], {}, False, "/ws")) is None
    assert plan_from_data(None) is None


def test_a_run_with_nothing_to_rebuild_replays_the_build_events(run_ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    """--build-event-json on the fast path: what the run built, every action cached (a bench
    checks from these that its "nothing to rebuild" figure executed nothing)."""
    import json

    first, again = tmp_path / "first.json", tmp_path / "again.json"
    built = pbuild("run", "--build-event-json", str(first), "//p:hello", cwd=run_ws)
    replayed = pbuild("run", "--build-event-json", str(again), "//p:hello", cwd=run_ws)
    assert built.code == 0 and replayed.code == 0, (str(built), str(replayed))
    assert replayed.out == built.out and replayed.err == ""  # the fast path stays quiet

    def events(path: Path) -> list[dict[str, object]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    actions = [(e["label"], e["mnemonic"], e["key"]) for e in events(first) if e["type"] == "action"]
    assert actions, "the first run built something"
    again_events = events(again)
    assert [(e["label"], e["mnemonic"], e["key"]) for e in again_events if e["type"] == "action"] == actions
    assert {e["status"] for e in again_events if e["type"] == "action"} == {"cached"}
    summary = again_events[-1]
    assert summary["type"] == "summary" and summary["executed"] == 0 and summary["cached"] == len(actions)
