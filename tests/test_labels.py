"""Labels and target patterns (issue 2, part 2)."""

from __future__ import annotations

import pytest
from pbuild.engine.errors import LoadError, PbuildError
from pbuild.engine.labels import Label, Pattern


@pytest.mark.parametrize(
    ("text", "current", "expected"),
    [
        ("//pkg:name", None, Label("pkg", "name")),
        ("//a/b/c:lib", None, Label("a/b/c", "lib")),
        ("//a/b/c", None, Label("a/b/c", "c")),  # //pkg means //pkg:<last folder>
        ("//:root", None, Label("", "root")),
        (":name", "a/b", Label("a/b", "name")),
        ("//pkg:out/file.txt", None, Label("pkg", "out/file.txt")),
    ],
)
def test_parse_label(text: str, current: str | None, expected: Label) -> None:
    assert Label.parse(text, current_package=current) == expected


@pytest.mark.parametrize("text", ["//a:x", "//a/b:lib", "//:root"])
def test_label_str_round_trips(text: str) -> None:
    assert str(Label.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "current", "fragment"),
    [
        ("name", "a", "is not a label"),
        (":name", None, "needs a package"),
        ("//a:", None, "not a valid label"),
        ("//", None, "not a valid label"),
        ("//../up:x", None, "not a valid label"),
        ("//a/../b:x", None, "not a valid label"),
        ("//a b:x", None, "not a valid label"),
    ],
)
def test_bad_labels_are_load_errors_with_a_hint(text: str, current: str | None, fragment: str) -> None:
    with pytest.raises(LoadError) as info:
        Label.parse(text, current_package=current)
    assert fragment in info.value.message
    assert info.value.hint and "//pkg" in info.value.hint
    assert isinstance(info.value, PbuildError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "current", "kind", "package", "name"),
    [
        ("//...", "", "recursive", "", ""),
        ("//a/...", "", "recursive", "a", ""),
        ("//a/b/...", "x", "recursive", "a/b", ""),
        ("//a:all", "", "package", "a", ""),
        ("//a:*", "", "package", "a", ""),
        (":all", "a/b", "package", "a/b", ""),
        ("//a:x", "", "label", "a", "x"),
        ("//a", "", "label", "a", "a"),
        (":x", "pkg", "label", "pkg", "x"),
    ],
)
def test_parse_pattern(text: str, current: str, kind: str, package: str, name: str) -> None:
    pattern = Pattern.parse(text, current_package=current)
    assert (pattern.kind, pattern.package, pattern.name) == (kind, package, name)


def test_pattern_str() -> None:
    assert str(Pattern.parse("//...")) == "//..."
    assert str(Pattern.parse("//a/...")) == "//a/..."
    assert str(Pattern.parse("//a:all")) == "//a:all"
    assert str(Pattern.parse("//a")) == "//a:a"


def test_recursive_pattern_matches_only_packages_below() -> None:
    everything = Pattern.parse("//...")
    below_a = Pattern.parse("//a/...")
    assert everything.matches_package("") and everything.matches_package("x/y")
    assert below_a.matches_package("a") and below_a.matches_package("a/b")
    assert not below_a.matches_package("ab")  # a prefix of the name is not a sub-folder
    assert not below_a.matches_package("b/a")
    only_a = Pattern.parse("//a:all")
    assert only_a.matches_package("a") and not only_a.matches_package("a/b")


def test_labels_order_and_hash_by_package_then_name() -> None:
    labels = [Label("b", "a"), Label("a", "z"), Label("a", "b")]
    assert sorted(labels) == [Label("a", "b"), Label("a", "z"), Label("b", "a")]
    assert len({Label("a", "x"), Label.parse("//a:x"), Label.parse(":x", current_package="a")}) == 1
