"""Docker's order (pbuild.lib.cmdline): where `pbuild run`'s and `pbuild exec`'s options stop, read
from their real parsers, and that the cut agrees with what argparse then parses."""

from __future__ import annotations

import argparse

import pytest
from pbuild.engine.cli import run_parser
from pbuild.lib.cmdline import CommandLine, OptionTable, split_at_operand, strip_command
from pbuild.tools.launcher.options import add_exec_options, image_command


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    run, _ = run_parser()
    return run


@pytest.fixture(scope="module")
def table(parser: argparse.ArgumentParser) -> OptionTable:
    return OptionTable.of(parser)


@pytest.mark.parametrize(("argv", "options", "operand", "rest"), [
    # the order of the issue: options, the target, the command verbatim
    (["--rm", "-e", "FOO=bar", "--entrypoint", "/usr/bin/python3.11", "//app:image", "-c", "print(1)"],
     ["--rm", "-e", "FOO=bar", "--entrypoint", "/usr/bin/python3.11"], "//app:image", ["-c", "print(1)"]),
    (["//app:image"], [], "//app:image", []),
    (["oci:/x", "sh", "-c", "echo -e"], [], "oci:/x", ["sh", "-c", "echo -e"]),
    # combined short flags, as Docker's: -it, -dit; a value-taking flag last takes the next word
    (["-it", "img", "sh"], ["-it"], "img", ["sh"]),
    (["-dit", "--name", "x", "img"], ["-dit", "--name", "x"], "img", []),
    (["-ite", "A=1", "img"], ["-ite", "A=1"], "img", []),
    # a value attached: -eX, -e=X, --env=X; then the next word is not taken
    (["-eFOO=bar", "img", "x"], ["-eFOO=bar"], "img", ["x"]),
    (["-e=FOO=bar", "img"], ["-e=FOO=bar"], "img", []),
    (["--env=FOO=bar", "img"], ["--env=FOO=bar"], "img", []),
    (["-iteA=1", "img"], ["-iteA=1"], "img", []),
    # values that look like labels, options or `--` are values
    (["--name", "//app:image", "oci:/x"], ["--name", "//app:image"], "oci:/x", []),
    (["-v", "/h:/c:ro", "-w", ":x", "//t"], ["-v", "/h:/c:ro", "-w", ":x"], "//t", []),
    (["-e", "--rm", "img"], ["-e", "--rm"], "img", []),
    (["--entrypoint", "--", "img"], ["--entrypoint", "--"], "img", []),
    (["--jobs", "-1", "//p"], ["--jobs", "-1"], "//p", []),
    (["-j", "2", "-k", "-q", "--remote-cache", "http://c/x", "//p"],
     ["-j", "2", "-k", "-q", "--remote-cache", "http://c/x"], "//p", []),
    (["--no-remote-upload", "//p"], ["--no-remote-upload"], "//p", []),
    # -- ends the options: the word after it is the operand, whatever it looks like
    (["--rm", "--", "-weird", "x"], ["--rm"], "-weird", ["x"]),
    # after the operand everything is the command's, options, -- and labels included
    (["img", "--", "-t"], [], "img", ["--", "-t"]),
    (["//bin:echo", "-v", "--", "//x", "--rm"], [], "//bin:echo", ["-v", "--", "//x", "--rm"]),
    (["//app:image", "-e", "X"], [], "//app:image", ["-e", "X"]),
    # unknown options stay among the options, for the parser to report
    (["--bogus", "img"], ["--bogus"], "img", []),
    (["-Z", "img"], ["-Z"], "img", []),
    # no operand
    (["--rm", "-e", "X"], ["--rm", "-e", "X"], None, []),
    (["-e"], ["-e"], None, []),
    ([], [], None, []),
    (["--rm", "--"], ["--rm"], None, []),
])  # fmt: skip
def test_the_cut(table: OptionTable, parser: argparse.ArgumentParser, argv: list[str], options: list[str],
                 operand: str | None, rest: list[str]) -> None:
    line = split_at_operand(table, argv)
    assert (list(line.options), line.operand, list(line.rest)) == (options, operand, rest)


@pytest.mark.parametrize(("argv", "expected"), [
    (["-it", "img"], {"interactive": True, "tty": True}),
    (["-dit", "img"], {"detach": True, "interactive": True, "tty": True}),
    (["-ite", "A=1", "img"], {"interactive": True, "tty": True, "env": ["A=1"]}),
    (["-eA=1", "-e=B=2", "--env=C=3", "--env", "D", "img"], {"env": ["A=1", "B=2", "C=3", "D"]}),
    (["--name", "//app:image", "img"], {"name": "//app:image"}),
    (["--net", "host", "-p", "1:2", "-m", "64m", "img"], {"network": "host", "publish": ["1:2"], "memory": "64m"}),
    (["-j", "3", "--cache-dir", "/c", "img"], {"jobs": 3, "cache_dir": "/c"}),
])  # fmt: skip
def test_argparse_reads_the_options_as_the_cut_did(table: OptionTable, parser: argparse.ArgumentParser,
                                                   argv: list[str], expected: dict[str, object]) -> None:
    """The options before the operand parse to what the scan took them for (argparse never
    sees the operand: had the scan taken a value for an option, argparse would find a word
    too many or too few)."""
    line = split_at_operand(table, argv)
    assert line.operand == "img"
    ns = parser.parse_args(list(line.options))
    for key, value in expected.items():
        assert getattr(ns, key) == value, key


def test_a_value_that_looks_like_an_option_is_refused_by_argparse(table: OptionTable,
                                                                  parser: argparse.ArgumentParser) -> None:
    """`-e --rm img`: the scan takes --rm as -e's value (so img stays the operand), argparse
    then refuses it: an error either way, never --rm silently applied."""
    from pbuild.engine.run import RunError

    line = split_at_operand(table, ["-e", "--rm", "img"])
    assert line.operand == "img"
    with pytest.raises(RunError, match="argument -e/--env: expected one argument") as caught:
        parser.parse_args(list(line.options))
    assert caught.value.exit_code == 125


@pytest.mark.parametrize(("argv", "given"), [
    (["-dit", "--name", "x", "img"], ("--detach", "--interactive", "--tty", "--name")),
    (["-e", "A", "--env=B", "-eC", "img"], ("--env",)),
    (["-j", "2", "--rm", "//t", "--name", "x"], ("--jobs", "--rm")),  # what follows the target is not given
    (["--bogus", "img"], ()),
])  # fmt: skip
def test_the_options_given_are_named_by_their_long_name(table: OptionTable, argv: list[str],
                                                        given: tuple[str, ...]) -> None:
    assert split_at_operand(table, argv).given == given


@pytest.mark.parametrize(("rest", "command", "option"), [
    ([], (), None),
    (["sh", "-c", "x"], ("sh", "-c", "x"), None),
    (["--", "-t"], ("-t",), None),  # one -- is dropped ...
    (["--", "--", "-t"], ("--", "-t"), None),  # ... and only one
    (["-e", "X"], ("-e", "X"), "-e"),  # the old order: an option of run right after the image
    (["--rm"], ("--rm",), "--rm"),
    (["--env=X"], ("--env=X",), "--env"),
    (["-it", "sh"], ("-it", "sh"), "-i"),
    (["-j", "2"], ("-j", "2"), "-j"),
    (["-c", "print(1)"], ("-c", "print(1)"), None),  # not one of run's: the command's (python -c)
    (["-S"], ("-S",), None),
    (["sh", "--rm"], ("sh", "--rm"), None),  # only the first word counts
])  # fmt: skip
def test_the_command_after_an_image(table: OptionTable, rest: list[str], command: tuple[str, ...],
                                    option: str | None) -> None:
    assert strip_command(table, rest) == (command, option)


def test_an_option_after_the_image_is_refused_with_the_fix(table: OptionTable) -> None:
    from pbuild.tools.launcher.errors import LauncherError

    with pytest.raises(LauncherError) as caught:
        image_command(table, ["-e", "X"], "image", "pbuild run [OPTIONS] IMAGE")
    assert caught.value.exit_code == 125
    assert caught.value.message == "-e after the image: options go before the image (pbuild run [OPTIONS] IMAGE)"
    assert caught.value.hint == "move -e before the image; if the command really starts with -e, put -- before it"
    assert image_command(table, ["--", "-e", "X"], "image", "u") == ("-e", "X")


def test_exec_has_its_own_table() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_exec_options(p)
    table = OptionTable.of(p)
    assert split_at_operand(table, ["-it", "-e", "A=1", "-w", "/tmp", "-u", "app", "web", "sh", "-c", "x"]) == \
        CommandLine(("-it", "-e", "A=1", "-w", "/tmp", "-u", "app"), "web", ("sh", "-c", "x"),
                    ("--interactive", "--tty", "--env", "--workdir", "--user"))
    assert split_at_operand(table, ["--rm", "web"]).operand == "web"  # not exec's: unknown, for argparse


def test_a_parser_the_scan_could_misread_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_abbrev"):
        OptionTable.of(argparse.ArgumentParser())
    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--maybe", nargs="?")
    with pytest.raises(ValueError, match="--maybe"):
        OptionTable.of(p)


def test_every_run_option_of_the_issue_is_there(table: OptionTable) -> None:
    for option in ("-d", "--rm", "--name", "-e", "--env-file", "-p", "-v", "-w", "-u", "-i", "-t", "--init",
                   "--entrypoint", "--network", "--read-only", "--cap-add", "--cap-drop", "--hostname", "--memory",
                   "--cpus", "--pids-limit", "--security-opt", "--platform", "-j", "-k", "-q", "--build-event-json",
                   "--remote-cache", "--workspace", "--cache-dir"):
        assert option in table.takes_value, option


@pytest.mark.parametrize(("target", "kind"), [
    ("//app:image", "label"), (":image", "label"), ("//app", "label"),
    ("oci:/x", "disk"), ("oci:rel/layout:tag", "disk"), ("docker-archive:/x.tar", "disk"),
    ("app:1", "stored"), ("127.0.0.1:5000/app:1", "stored"), ("busybox", "stored"), ("3f2a9c", "stored"),
    ("sha256:" + "a" * 64, "stored"), ("app:image", "stored"),
])  # fmt: skip
def test_what_the_target_names(target: str, kind: str) -> None:
    from pbuild.engine.run import target_kind

    assert target_kind(target) == kind
