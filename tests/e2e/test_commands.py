"""Commands of rule families (``COMMANDS`` beside ``RULES``): the image family's ``push`` and
``images`` through the real CLI and a real registry, the CLI built from the families' records,
and a build that never imports a family's command code."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine import cli
from pbuild.engine.api import Command, CommandContext, DefaultInfo, PbuildError
from pbuild.engine.commandcontext import EngineCommandContext

from tests.support.peers import Registry, docker_registry
from tests.support.runner import Runner, WorkspaceFactory, assert_user_error

IMAGE_WS = {
    "srv/BUILD.toml": """
[files]
rule = "layer"
srcs = ["hello.txt"]
prefix = "/opt/app"

[image]
rule = "image"
layers = [":files"]
cmd = ["/bin/true"]
repo_tags = ["fixture/srv:1.0"]

[note]
rule = "genrule"
outs = ["note.txt"]
cmd = "echo note > $@"
""",
    "srv/hello.txt": "hello\n",
}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with docker_registry(tmp_path / "registry") as server:
        yield server


def test_push_and_images_are_the_image_familys(workspace: WorkspaceFactory, pbuild: Runner,
                                               registry: Registry, tmp_path: Path) -> None:
    ws = workspace(IMAGE_WS)
    env = {"DOCKER_CONFIG": str(tmp_path / "docker-config")}
    result = pbuild("push", "//srv:image", f"{registry.host}/srv:1.0", "--plain-http", "-q", cwd=ws, env=env)
    assert result.code == 0, str(result)
    digest = (ws / "pbuild-out" / "srv" / "image" / "digest").read_text().strip()
    assert result.out.splitlines()[0] == f"pushed {registry.host}/srv:1.0@{digest}", str(result)
    again = pbuild("push", "//srv:image", f"{registry.host}/srv:1.0", "--plain-http", "-q", cwd=ws, env=env)
    assert again.code == 0 and "0 blob(s) uploaded" in again.out, str(again)

    listed = pbuild("images", cwd=ws / "srv")
    assert listed.code == 0, str(listed)
    assert listed.out.splitlines()[1].split()[:3] == ["//srv:image", "fixture/srv:1.0", digest[7:19]], listed.out

    assert_user_error(pbuild("push", "//srv:note", f"{registry.host}/srv:2", "--plain-http", cwd=ws), 2,
                      "//srv:note is not an image", "hint: pbuild push takes an image target")
    assert_user_error(pbuild("push", "//srv:all", f"{registry.host}/srv:2", "--plain-http", cwd=ws), 2,
                      "//srv:all names 3 targets; name exactly one")


def test_the_families_register_their_commands() -> None:
    from pbuild.engine.ruleset import family_commands
    from pbuild.rules.oci import COMMANDS as IMAGE_COMMANDS
    from pbuild.rules.stack import COMMANDS as STACK_COMMANDS

    assert [c.name for c in IMAGE_COMMANDS] == ["push", "images", "pull", "rmi", "tag", "save", "load", "sbom"]
    assert [c.name for c in STACK_COMMANDS] == ["up", "down", "ps", "logs"]
    assert [c.name for c in family_commands()] == ["push", "images", "pull", "rmi", "tag", "save", "load", "sbom", "up", "down",
                                                   "ps", "logs"]
    assert "push" not in cli.make_parser(()).format_help()  # the engine alone has no push


def test_a_family_command_gets_its_flags_and_the_engine_context(workspace: WorkspaceFactory, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace(IMAGE_WS)

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target")
        parser.add_argument("--loud", action="store_true")

    def run(ctx: CommandContext) -> int:
        built = ctx.build_one(ctx.args.target)
        [note] = built.providers[DefaultInfo].files
        with open(built.path(note), encoding="utf-8") as handle:
            ctx.out(f"{built.label} ({built.rule_name}) in {ctx.workspace_root()}: {handle.read().strip()}"
                    + ("!" if ctx.args.loud else ""))
        if ctx.args.loud:
            raise PbuildError("too loud", hint="drop --loud")
        return 7

    command = Command("note", help="show a note", description="Build a note and show it.", run=run,
                      configure=configure, build_flags=True)
    parser = cli.make_parser([command])
    assert "show a note" in parser.format_help()
    args = parser.parse_args(["note", "//srv:note", "-q", "--workspace", str(ws), "--cache-dir", str(tmp_path / "c")])
    assert args.jobs >= 1 and args.remote_cache is None  # the build flags came with build_flags=True
    context = EngineCommandContext(args, str(tmp_path), make_request=lambda p, w: cli._request(args, p, w))
    assert args.family_command.run(context) == 7
    assert capsys.readouterr().out == f"//srv:note (genrule) in {ws}: note\n"
    loud = parser.parse_args(["note", "//srv:note", "--loud", "-q", "--workspace", str(ws),
                              "--cache-dir", str(tmp_path / "c")])
    with pytest.raises(PbuildError, match="too loud"):
        loud.family_command.run(EngineCommandContext(loud, str(tmp_path), lambda p, w: cli._request(loud, p, w)))


def test_a_build_imports_no_family_command_code(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    ws = workspace(IMAGE_WS)
    probe = ("import sys\nfrom pbuild.engine.cli import main\n"
             "for argv in (['version'], ['build', '//srv:note', '-q'], ['//srv:note', '-q']):\n"
             "    assert main(argv) == 0\n"
             "print(sorted(m for m in sys.modules if m.startswith(('pbuild.rules.oci.', 'pbuild.lib.oci.registry'))))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ws, env=pbuild.env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.splitlines()[-1]
    assert "pbuild.rules.oci.rules" in loaded  # the image rules, as the workspace has images
    assert "pbuild.rules.oci.commands" not in loaded and "pbuild.rules.oci.push" not in loaded, loaded
    assert "pbuild.lib.oci.registry" not in loaded, loaded  # the registry client: push and pull only
