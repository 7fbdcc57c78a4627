"""Compose's variable interpolation: the caller's environment over the folder's .env, Compose's
forms, `$$`, unset variables warned about, errors with file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pbuild.tools.stack.compose import load_compose
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.interpolate import InterpolationError, interpolate


def expand(text: str, **variables: str) -> str:
    unset: list[str] = []
    result = interpolate(text, variables, unset.append)
    return result + (f" [unset: {','.join(unset)}]" if unset else "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$A and ${A}", "a and a"),
        ("cost: $$5, shell $$HOME", "cost: $5, shell $HOME"),
        ("${MISSING:-fallback} ${EMPTY:-fallback} ${EMPTY-unused}|", "fallback fallback |"),
        ("${A:+set} ${EMPTY:+set} ${EMPTY+set} ${MISSING+set}", "set  set "),
        ("${MISSING:-${A}-x}", "a-x"),  # a default may hold a variable
        ("${MISSING}/x", "/x [unset: MISSING]"),
        ("${A}:${PORT:-8080}", "a:8080"),
    ],
)
def test_compose_forms(text: str, expected: str) -> None:
    assert expand(text, A="a", EMPTY="") == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("${A", "without its"),
        ("${1A}", "is not a variable"),
        ("a $ b", "write $$"),
        ("${MISSING:?give the port}", "MISSING is required: give the port"),
        ("${EMPTY?x}${EMPTY:?set it}", "EMPTY is required: set it"),
    ],
)
def test_bad_or_required_variables_are_refused(text: str, says: str) -> None:
    with pytest.raises(InterpolationError, match=says.replace("$", r"\$")):
        expand(text, EMPTY="")


def write_project(tmp_path: Path, compose: str, dotenv: str | None = None) -> Path:
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(compose))
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    return tmp_path / "compose.yaml"


COMPOSE = """\
    name: demo
    services:
      web:
        image: oci:./layout
        command: ["sh", "-c", "echo $$HOME ${GREETING:-hi}"]
        ports: ["127.0.0.1:${WEB_PORT}:8080"]
        environment:
          LEVEL: ${LEVEL}
"""


def test_a_compose_file_takes_the_environment_over_its_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_project(tmp_path, COMPOSE, "WEB_PORT=18081\nGREETING=hello from .env\nLEVEL=debug\n")
    monkeypatch.setenv("LEVEL", "info")
    [web] = load_compose(str(path)).services
    assert web.command == ("sh", "-c", "echo $HOME hello from .env")
    assert web.ports[0].host_port == 18081
    assert dict(web.environment)["LEVEL"] == "info"
    assert "warning" not in capsys.readouterr().err


def test_an_unset_variable_is_empty_with_a_warning_naming_its_line(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LEVEL", raising=False)
    path = write_project(tmp_path, COMPOSE, "WEB_PORT=18081\n")
    [web] = load_compose(str(path)).services
    assert dict(web.environment)["LEVEL"] == ""
    assert f"{path}:8: the variable LEVEL is not set" in capsys.readouterr().err


def test_an_unreadable_variable_is_an_input_error_with_its_line(tmp_path: Path) -> None:
    path = write_project(tmp_path, COMPOSE.replace("${LEVEL}", "${LEVEL:?set LEVEL first}"), "WEB_PORT=1\n")
    with pytest.raises(StackError) as info:
        load_compose(str(path))
    assert info.value.exit_code == 2 and f"{path}:8: LEVEL is required: set LEVEL first" in info.value.message


def test_a_bad_dotenv_is_refused_with_where(tmp_path: Path) -> None:
    path = write_project(tmp_path, COMPOSE, "WEB_PORT 18081\n")
    with pytest.raises(StackError, match=r"\.env, line 1: expected NAME=VALUE"):
        load_compose(str(path))
