"""`pbuild run [OPTIONS] TARGET|IMAGE [COMMAND] [ARG...]` and `pbuild exec` on the real CLI: each
bad command line is one message with the fix and exit 125 (Docker's code for run's own errors),
the same for a label, an image from disk and the launcher alone; a program gets its words verbatim."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.runner import Result, Runner, WorkspaceFactory, assert_user_error

SH_BINARY = '''
from pbuild.engine.api import DefaultInfo, RunInfo, attr, rule


@rule("sh_binary", doc="A shell script to run.", attrs={"script": attr.string("The script's text.", required=True)})
def sh_binary(ctx):
    script = ctx.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(script, ctx.attr.script)
    return [DefaultInfo(files=(script,)), RunInfo(argv=("/bin/sh", script))]


RULES = [sh_binary]
'''

USAGE = "pbuild run [OPTIONS] TARGET|IMAGE [COMMAND] [ARG...]"


@pytest.fixture
def ws(workspace: WorkspaceFactory) -> Path:
    return workspace({
        "rules.py": SH_BINARY,
        "p/BUILD.toml": "[args]\nrule = \"sh_binary\"\nscript = '''for a in \"$@\"; do echo \"[$a]\"; done'''\n",
    }, workspace_toml='[workspace]\nplugins = ["rules.py"]\n')


def one_error(result: Result, *fragments: str) -> None:
    """Exit 125, the fragments, and the message in one line (plus its hint line)."""
    assert_user_error(result, 125, *fragments)
    lines = result.err.strip().splitlines()
    assert len(lines) == 2 and "error:" in lines[0] and lines[1].startswith("  hint: "), result.err


def launcher(*args: str, cwd: Path) -> Result:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "pbuild.tools.launcher", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    return Result(proc.returncode, proc.stdout, proc.stderr, args)


# -- a program gets its words verbatim -----------------------------------------------------------------


@pytest.mark.parametrize(("words", "printed"), [
    ([], []),
    (["a", "b c"], ["a", "b c"]),
    (["-v", "--rm", "-e", "X"], ["-v", "--rm", "-e", "X"]),  # run's options, after the target: the program's
    (["--", "-v"], ["-v"]),  # one -- right after the target is dropped
    (["--", "--", "-v"], ["--", "-v"]),  # only one
    (["-v", "--", "//x:y", "--help"], ["-v", "--", "//x:y", "--help"]),  # a later -- stays
])  # fmt: skip
def test_a_program_gets_the_words_after_the_target(ws: Path, pbuild: Runner, words: list[str],
                                                   printed: list[str]) -> None:
    for attempt in ("builds", "replays the stamp"):
        result = pbuild("run", "-q", "//p:args", *words, cwd=ws)
        assert result.code == 0, (attempt, str(result))
        assert result.out.splitlines() == [f"[{w}]" for w in printed], (attempt, result.out)


def test_build_options_go_before_the_target(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    result = pbuild("run", "-j", "1", "--keep-going", "--build-event-json", str(events), "--workspace", str(ws),
                    ":args", "x", cwd=ws / "p")  # fmt: skip
    assert result.code == 0 and result.out == "[x]\n", str(result)
    assert events.read_text()


# -- bad command lines: one message, the fix, 125 ----------------------------------------------------


def test_container_options_for_a_program(ws: Path, pbuild: Runner) -> None:
    for attempt in ("builds", "replays the stamp"):
        result = pbuild("run", "--rm", "-e", "X=1", "-it", "//p:args", cwd=ws)
        one_error(result, "--rm, --env, --interactive, --tty: container options apply to an image, "
                  "and //p:args is a program", "`pbuild run //p:args ARG...`")
        assert pbuild("run", "//p:args", cwd=ws).code == 0, attempt  # records the plan for the second attempt


def test_an_unknown_option(ws: Path, pbuild: Runner) -> None:
    one_error(pbuild("run", "--bogus", "//p:args", cwd=ws), "pbuild run: unrecognized arguments: --bogus", USAGE)
    one_error(pbuild("run", "-Z", "oci:/nowhere", cwd=ws), "unrecognized arguments: -Z")
    one_error(pbuild("run", "--ent", "/bin/sh", "oci:/nowhere", cwd=ws), "unrecognized arguments: --ent")  # no abbreviations


def test_a_missing_target(ws: Path, pbuild: Runner) -> None:
    for argv in (["run"], ["run", "--rm"], ["run", "-e", "X"], ["run", "--rm", "--"]):
        one_error(pbuild(*argv, cwd=ws), "pbuild run needs a target or an image", USAGE)
    one_error(pbuild("run", "--rm", "-e", cwd=ws), "argument -e/--env: expected one argument")


def test_an_option_after_the_image(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    """The old order (`pbuild run IMAGE -e X`): refused before the image is even read."""
    for words, option in ((["-e", "X"], "-e"), (["--rm"], "--rm"), (["-it", "sh"], "-i"), (["--name=x"], "--name")):
        result = pbuild("run", "oci:/nowhere", *words, cwd=ws)
        one_error(result, f"{words[0]} after the image: options go before the image ({USAGE})",
                  f"move {option} before the image; if the command really starts with {words[0]}, put -- before it")
    # the launcher alone says the same, with its own usage
    result = launcher("run", "oci:/nowhere", "-e", "X", cwd=tmp_path)
    one_error(result, "-e after the image: options go before the image (pbuild run [OPTIONS] IMAGE")
    # with -- before it the word is the command's, and the image is read (and found missing here)
    result = pbuild("run", "oci:/nowhere", "--", "-e", "X", cwd=ws)
    assert_user_error(result, 125, "OCI layout /nowhere is not a directory")


def test_build_options_for_an_image_that_is_not_built(ws: Path, pbuild: Runner) -> None:
    one_error(pbuild("run", "-j", "2", "-k", "oci:/nowhere", cwd=ws),
              "--jobs, --keep-going: build options apply to a target, and oci:/nowhere is an image")
    one_error(pbuild("run", "--cache-dir", "/c", "docker-archive:/x.tar", cwd=ws), "--cache-dir: build options")


def test_another_platform(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    """A platform pbuild does not know is refused before anything is built or read (another one
    it knows runs under emulation: tests/e2e/test_run_platform.py)."""
    from pbuild.tools.launcher.hostplatform import host_platform

    host = host_platform()
    other = "linux/arm64" if host == "linux/amd64" else "linux/amd64"
    for platform, result in (("linux/s390x", pbuild("run", "--platform", "linux/s390x", "oci:/nowhere", cwd=ws)),
                             ("windows/amd64", pbuild("run", "--platform=windows/amd64", "//p:args", cwd=ws)),
                             ("linux/s390x", launcher("run", "--platform", "linux/s390x", "oci:/nowhere",
                                                      cwd=tmp_path))):
        one_error(result, f"--platform {platform}: not a platform pbuild runs",
                  f"use --platform {host} (this machine's), {other} (under emulation), or leave --platform out")
    # the host's own platform is accepted (and the image then read: missing here)
    assert_user_error(pbuild("run", "--platform", host, "oci:/nowhere", cwd=ws), 125, "is not a directory")


def test_a_bad_option_value_is_125_for_a_label_and_an_image_alike(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    for result in (pbuild("run", "--pids-limit", "many", "//p:args", cwd=ws),
                   pbuild("run", "--pids-limit", "many", "oci:/nowhere", cwd=ws),
                   launcher("run", "--pids-limit", "many", "oci:/nowhere", cwd=tmp_path)):
        one_error(result, "argument --pids-limit: invalid int value: 'many'")
    for result in (pbuild("run", "-v", "/no/such/dir:/x", "//p:args", cwd=ws),
                   pbuild("run", "-v", "/no/such/dir:/x", "oci:/nowhere", cwd=ws)):
        one_error(result, "volume source /no/such/dir does not exist")


def test_a_build_that_fails_keeps_the_build_codes(ws: Path, pbuild: Runner) -> None:
    assert_user_error(pbuild("run", "//p:nope", cwd=ws), 2, "nope")


# -- exec --------------------------------------------------------------------------------------------


def test_exec_command_lines(ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    env = {"PBUILD_RUNTIME_DIR": str(tmp_path / "run")}
    one_error(pbuild("exec", cwd=ws, env=env), "pbuild exec needs a container and a command")
    one_error(pbuild("exec", "--bogus", "web", "sh", cwd=ws, env=env), "unrecognized arguments: --bogus")
    one_error(pbuild("exec", "web", "-it", "sh", cwd=ws, env=env),
              "-it after the container: options go before the container", "move -i before the container")
    one_error(pbuild("exec", "--rm", "web", "sh", cwd=ws, env=env), "unrecognized arguments: --rm")  # run's, not exec's
    result = pbuild("exec", "-it", "-e", "A=1", "-w", "/tmp", "-u", "app", "web", "sh", cwd=ws, env=env)
    assert_user_error(result, 1, "no such container: web")  # the options parsed; the container is missing


# -- help ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["help", "run"], ["run", "--help"], ["run", "-h"]])
def test_run_help_shows_dockers_order_and_every_option_grouped(pbuild: Runner, tmp_path: Path,
                                                               argv: list[str]) -> None:
    result = pbuild(*argv, cwd=tmp_path)
    assert result.code == 0, str(result)
    out = result.out
    assert out.startswith(f"usage: {USAGE}\n")
    build, container = out.index("build options (for a TARGET):"), out.index("container options (for an image):")
    assert build < out.index("remote cache:") < container
    for option in ("--jobs", "--keep-going", "--quiet", "--build-event-json", "--workspace", "--cache-dir"):
        assert build < out.index(option) < container, option
    for option in ("--detach", "--rm", "--name", "--env", "--env-file", "--publish", "--volume", "--workdir",
                   "--user", "--interactive", "--tty", "--init", "--entrypoint", "--network", "--read-only",
                   "--cap-add", "--cap-drop", "--hostname", "--memory", "--cpus", "--pids-limit", "--security-opt",
                   "--platform"):
        assert out.index(option, container) > container, option


def test_help_of_other_commands(pbuild: Runner, tmp_path: Path) -> None:
    result = pbuild("help", "exec", cwd=tmp_path)
    assert result.code == 0 and result.out.startswith("usage: pbuild exec [OPTIONS] CONTAINER COMMAND [ARG...]")
    for option in ("--interactive", "--tty", "--env", "--workdir", "--user"):
        assert option in result.out
    result = pbuild("help", "build", cwd=tmp_path)
    assert result.code == 0 and result.out.startswith("usage: pbuild build")
    assert pbuild("help", cwd=tmp_path).code == 0
    assert pbuild("help", "frobnicate", cwd=tmp_path).code == 2


def test_an_image_not_in_the_store_outside_any_workspace(pbuild: Runner, tmp_path: Path) -> None:
    for ref in ("127.0.0.1:5000/app:1", "nosuch", "abcdef12"):
        result = pbuild("run", "--rm", ref, "sh", cwd=tmp_path)
        one_error(result, f"no image '{ref}' in the image store ({tmp_path / 'cache' / 'images'})",
                  "`pbuild images` lists the stored images")
