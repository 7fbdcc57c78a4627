"""TOML syntax errors are reported where the construct left open starts, the parser's words beside."""

from __future__ import annotations

import pytest
from pbuild.lib.tomlpos import TomlInputError, load_toml, toml_error_location, toml_error_message


def error_of(text: str) -> tuple[str, str]:
    with pytest.raises(Exception) as info:
        load_toml(text)
    location = toml_error_location("BUILD.toml", info.value)  # type: ignore[arg-type]
    message, _ = toml_error_message(info.value, "hint")  # type: ignore[arg-type]
    return str(location), message


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('[a]\nrule = "x"\nouts = ["o"\nsrcs = []\n', "BUILD.toml:3:8", "array opened here"),
        ('[a]\nx = [[1, 2], [3\n]\ny = 1\n', "BUILD.toml:2:5", "array opened here"),
        ("[a]\nx = [1,\n  2,\n", "BUILD.toml:2:5", "array opened here"),
        ('[a]\nx = "abc\ny = 1\n', "BUILD.toml:2:5", "string opened here"),
        ("[a]\nx = 'abc\n", "BUILD.toml:2:5", "string opened here"),
        ('[a]\nx = """abc\ny = 1\n', "BUILD.toml:2:5", "multi-line string opened here"),
        ("[a]\nx = {b = 1\ny = 2\n", "BUILD.toml:2:5", "inline table opened here"),
        ("[a\nx = 1\n", "BUILD.toml:1:1", "table header opened here"),
        ('a = """x\n"""\n[[b]\n', "BUILD.toml:3:1", "table header opened here"),
        ('x = ["a]", {y = "}"}, # ]\n  [1]\nz = 1\n', "BUILD.toml:1:5", "array opened here"),
    ],
)
def test_an_unclosed_construct_is_reported_where_it_opens(text: str, where: str, what: str) -> None:
    location, message = error_of(text)
    assert location == where
    assert message.startswith(f"invalid TOML: {what}") and "the parser stopped at" in message


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('[x]\nsrcs = [\n  "a",\n  = 3\n]\n', "BUILD.toml:4:3", "Invalid value"),  # closed; a bad value
        ("[a]\nx = [1, 2 3]\n", "BUILD.toml:2:11", "Unclosed array"),  # one line: the parser's place
        ("[a]\nx = {b = 1 2}\n", "BUILD.toml:2:12", "Unclosed inline table"),
        ("[a]\nx = 1 2\n", "BUILD.toml:2:7", "Expected newline"),
    ],
)
def test_other_errors_keep_the_parsers_position(text: str, where: str, what: str) -> None:
    location, message = error_of(text)
    assert location == where
    assert message == f"invalid TOML: {what}" or message.startswith(f"invalid TOML: {what}")


def test_valid_toml_with_brackets_in_strings_and_comments_loads() -> None:
    text = 'x = ["a]", "[b", {y = "}"}]  # [ {\n[t]\nz = """\n[not a header\n"""\n'
    assert load_toml(text) == {"x": ["a]", "[b", {"y": "}"}], "t": {"z": "[not a header\n"}}


def test_the_unclosed_report_is_a_toml_error_with_a_hint() -> None:
    with pytest.raises(TomlInputError) as info:
        load_toml('[a]\nouts = ["o"\nsrcs = []\n')
    assert "close it" in info.value.hint
