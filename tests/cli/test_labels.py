"""Labels and target patterns: parsing, printing, matching, and malformed ones as messages."""

from __future__ import annotations

import pytest
from pbuild.engine.errors import LoadError, PbuildError
from pbuild.engine.labels import Label, Pattern

from tests.support.runner import Runner, WorkspaceFactory, assert_user_error


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


# -- malformed labels through the CLI ---------------------------------------------------------------

LABEL_WS = {
    "app/BUILD.toml": '[image]\nrule = "genrule"\nouts = ["image.txt"]\ncmd = "echo > $@"\n',
}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("//...:x", "package names may not contain '...': //pkg/... is a pattern"),
        ("//app/...:image", "package names may not contain '...'"),
        ("///app:image", "package names may not start with '/'"),
        ("//app/:image", "package names may not end with '/'"),
        ("//app//x:image", "package names may not contain '//'"),
        ("//app/../app:image", "package names may not have '..' as a path segment"),
        ("//./app:image", "package names may not have '.' as a path segment"),
        ("//a b:c", "package names may not contain ' '"),
        ("//app:", "target names may not be empty"),
        (":", "target names may not be empty"),
        ("//app::image", "target names may not contain ':'"),
        ("//app:image/", "target names may not end with '/'"),
        ("//app:/image", "target names may not start with '/'"),
        ("//app:a//b", "target names may not contain '//'"),
        ("//app:..", "target names may not have '..' as a path segment"),
        ("//app:x/../image", "target names may not have '..' as a path segment"),
        ("//app:.", "target names may not have '.' as a path segment"),
    ],
)
def test_malformed_labels_say_what_a_label_looks_like(text: str, why: str, workspace: WorkspaceFactory,
                                                      pbuild: Runner) -> None:
    root = workspace(LABEL_WS)
    result = pbuild("build", text, cwd=root / "app")
    assert_user_error(result, 2, f"{text!r} is not a valid label: {why}",
                      "hint: labels look like //pkg/path:name, //pkg/path (= //pkg/path:path) or :name")


@pytest.mark.parametrize("text", ["///...", "//../...", "//app/:all", "//../..:all"])
def test_malformed_patterns_never_reach_outside_the_workspace(text: str, workspace: WorkspaceFactory,
                                                              pbuild: Runner) -> None:
    root = workspace(LABEL_WS, name="inner/ws")
    (root.parent / "BUILD.toml").write_text('[outside]\nrule = "filegroup"\nsrcs = []\n')
    result = pbuild("build", text, cwd=root)
    assert_user_error(result, 2, f"{text!r} is not a valid pattern",
                      "hint: patterns look like //pkg:name, //pkg:all, //pkg/... or //...")


def test_recursive_pattern_with_all(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    """Bazel's //pkg/...:all is //pkg/...: every target below pkg."""
    root = workspace(LABEL_WS)
    result = pbuild("build", "//app/...:all", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "app" / "image.txt").exists()


def test_a_malformed_label_in_a_build_file_names_file_line_and_target(workspace: WorkspaceFactory,
                                                                      pbuild: Runner) -> None:
    root = workspace({**LABEL_WS, "use/BUILD.toml": '[use]\nrule = "filegroup"\nsrcs = ["///app:image"]\n'})
    assert_user_error(pbuild("build", "//use", cwd=root), 2, "use/BUILD.toml:3", "target //use:use",
                      "'///app:image' is not a valid label: package names may not start with '/'")


@pytest.mark.parametrize(("table", "why"), [('["a b"]', "may not contain ' '"), ('[".."]', "may not have '..' as a path segment"),
                                            ('["x/"]', "may not end with '/'")])
def test_a_target_name_bazel_would_refuse_is_a_load_error(table: str, why: str, workspace: WorkspaceFactory,
                                                          pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": f'[ok]\nrule = "filegroup"\nsrcs = []\n\n{table}\nrule = "filegroup"\nsrcs = []\n'})
    assert_user_error(pbuild("build", "//p:ok", cwd=root), 2, "p/BUILD.toml:5", f"target names {why}")
