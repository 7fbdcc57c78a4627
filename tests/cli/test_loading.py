"""Workspace discovery and loading, and its bad inputs as messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pbuild.engine.errors import LoadError, WorkspaceError
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader
from pbuild.engine.ruleset import RuleSet
from pbuild.engine.workspace import Workspace, find_workspace

from tests.support.runner import GOOD_PACKAGE, GuardedBuild, Runner, WorkspaceFactory, assert_user_error

FILEGROUP = '[{name}]\nrule = "filegroup"\nsrcs = {srcs}\n'


def loader_for(root: Path) -> Loader:
    workspace = find_workspace(str(root))
    return Loader(workspace, RuleSet(workspace))


# -- finding the workspace ----------------------------------------------------------------------


def test_workspace_is_found_upward_from_a_subfolder(workspace: WorkspaceFactory) -> None:
    root = workspace({"a/b/c/keep.txt": ""})
    found = find_workspace(str(root / "a" / "b" / "c"))
    assert found.root == str(root)
    assert found.name == "fixture"


def test_explicit_workspace_must_hold_workspace_toml(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as info:
        find_workspace(str(tmp_path), explicit=str(tmp_path))
    assert "no WORKSPACE.toml" in info.value.message
    assert info.value.hint and "WORKSPACE.toml" in info.value.hint


def test_no_workspace_found(tmp_path: Path, pbuild: Runner) -> None:
    lonely = tmp_path / "not-a-workspace" / "sub"
    lonely.mkdir(parents=True)
    result = pbuild("build", "//a:x", cwd=lonely)
    assert_user_error(result, 2, "no WORKSPACE.toml found", str(lonely), "hint:", "--workspace")
    result = pbuild("build", "//a:x", "--workspace", str(lonely), cwd=tmp_path)
    assert_user_error(result, 2, "no WORKSPACE.toml there", "hint:")
    assert not (lonely / "pbuild-out").exists()


def test_workspace_flag_builds_from_anywhere(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    root = workspace(GOOD_PACKAGE)
    result = pbuild("build", "//good:x", "--workspace", str(root), cwd=tmp_path)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "good" / "x.txt").read_text() == "good input\n"


# -- bad TOML, unknown rules, missing labels (CLI: message, exit code, nothing lost) --------------


def test_invalid_toml_names_file_line_and_column(workspace: WorkspaceFactory, pbuild: Runner,
                                                 guarded: GuardedBuild) -> None:
    root = workspace(GOOD_PACKAGE)
    guard = guarded(root)
    (root / "bad").mkdir()
    (root / "bad" / "BUILD.toml").write_text('[x]\nrule = "filegroup"\nsrcs = [\n  "a",\n  = 3\n]\n')
    result = pbuild("build", "//bad:x", cwd=root)
    assert_user_error(result, 2, "bad/BUILD.toml:5:3", "invalid TOML", "hint:")
    guard.assert_intact()


def test_invalid_workspace_toml(workspace: WorkspaceFactory, pbuild: Runner, guarded: GuardedBuild) -> None:
    root = workspace(GOOD_PACKAGE)
    guard = guarded(root)
    (root / "WORKSPACE.toml").write_text('[workspace]\nname = "x"\n[python\n')
    result = pbuild("build", "//good:x", cwd=root)
    assert_user_error(result, 2, "WORKSPACE.toml:3:", "invalid TOML")
    guard.assert_intact()


# Values nested deeper than tomllib's recursion allows (and deeper than pbuild reads at all).
DEEP_VALUES = {
    "arrays-500": "[" * 500 + "]" * 500,
    "inline-tables-500": "{a = " * 500 + "1" + "}" * 500,
    "arrays-150": "[" * 150 + "]" * 150,  # tomllib copes; whatever walks the value later may not
}


@pytest.mark.parametrize("value", list(DEEP_VALUES.values()), ids=list(DEEP_VALUES))
def test_deeply_nested_values_are_load_errors(value: str, workspace: WorkspaceFactory, pbuild: Runner,
                                              guarded: GuardedBuild) -> None:
    root = workspace({**GOOD_PACKAGE, "deep/BUILD.toml": f'[x]\nrule = "filegroup"\n\nsrcs = {value}\n'})
    guard = guarded(root)
    result = pbuild("build", "//deep:x", cwd=root)
    assert_user_error(result, 2, "deep/BUILD.toml:4:", "values nested more than 100 levels deep",
                      "hint: nest tables and arrays at most 100 levels deep")
    guard.assert_intact()


def test_deep_nesting_by_dotted_table_headers(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    header = ".".join(["x"] + ["a"] * 200)
    root = workspace({"deep/BUILD.toml": f'[x]\nrule = "filegroup"\nsrcs = []\n\n[{header}]\nb = 1\n'})
    assert_user_error(pbuild("build", "//deep:x", cwd=root), 2, "deep/BUILD.toml:5", "nested more than 100 levels")


def test_deep_nesting_in_workspace_toml_and_user_config(workspace: WorkspaceFactory, pbuild: Runner,
                                                        tmp_path: Path) -> None:
    root = workspace(GOOD_PACKAGE, workspace_toml='[workspace]\nname = "x"\ndeep = ' + "[" * 500 + "]" * 500 + "\n")
    assert_user_error(pbuild("build", "//good:x", cwd=root), 2, "WORKSPACE.toml:3:", "nested more than 100 levels")
    root = workspace(GOOD_PACKAGE, name="ws2")
    config = tmp_path / "xdg-config" / "pbuild" / "config.toml"  # the Runner's $XDG_CONFIG_HOME
    config.parent.mkdir(parents=True)
    config.write_text("[remote]\nx = " + "{a = " * 500 + "1" + "}" * 500 + "\n")
    assert_user_error(pbuild("build", "//good:x", cwd=root), 2, str(config), "nested more than 100 levels")


def test_deep_nesting_in_lock_inputs(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    """What `pbuild lock --debian` scans (BUILD.toml) and what a deb_packages target reads (its lock)."""
    root = workspace({"p/BUILD.toml": '[debs]\nrule = "deb_packages"\npackages = ["hello"]\n',
                      "p/debian.lock.json": "[" * 100_000 + "]" * 100_000,
                      "q/BUILD.toml": '[q]\nrule = "filegroup"\nsrcs = ' + "[" * 500 + "]" * 500 + "\n"})
    assert_user_error(pbuild("lock", "--debian", cwd=root), 2, "q/BUILD.toml", "nested more than 100 levels")
    assert_user_error(pbuild("build", "//p:debs", cwd=root), 2, "p/BUILD.toml:3", "target //p:debs",
                      "cannot read the Debian lock p/debian.lock.json")
    (root / "p" / "debian.lock.json").write_text("[]")
    assert_user_error(pbuild("build", "//p:debs", cwd=root), 2, "p/debian.lock.json is not a Debian lock")


def test_target_without_a_rule(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"b/BUILD.toml": '[x]\nsrcs = []\n'})
    result = pbuild("build", "//b:x", cwd=root)
    assert_user_error(result, 2, "b/BUILD.toml:1", "target //b:x", "missing rule", 'rule = "genrule"')


def test_top_level_key_is_not_a_target(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"a/BUILD.toml": '# targets\nname = "oops"\n'})
    result = pbuild("build", "//a:name", cwd=root)
    assert_user_error(result, 2, "a/BUILD.toml:2", "not a target table", "hint:")


def test_load_error_prints_no_build_summary(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"a/BUILD.toml": "[x\n"})
    result = pbuild("build", "//a:x", cwd=root)
    assert_user_error(result, 2, "a/BUILD.toml:1")
    assert "actions:" not in result.err and "action:" not in result.err, str(result)


def test_unknown_rule_suggests_the_nearest(workspace: WorkspaceFactory, pbuild: Runner,
                                           guarded: GuardedBuild) -> None:
    root = workspace({**GOOD_PACKAGE, "b/BUILD.toml": '[y]\n# a comment\nrule = "genrul"\nouts = ["o"]\ncmd = "true"\n'})
    guard = guarded(root)
    result = pbuild("build", "//b:y", cwd=root)
    assert_user_error(result, 2, "b/BUILD.toml:3", "target //b:y", "unknown rule 'genrul'",
                      "did you mean genrule", "filegroup")
    guard.assert_intact()


def test_missing_target_and_package_suggest_near_names(workspace: WorkspaceFactory, pbuild: Runner,
                                                       guarded: GuardedBuild) -> None:
    root = workspace({
        **GOOD_PACKAGE,
        "lib/BUILD.toml": FILEGROUP.format(name="helpers", srcs='["h.txt"]'),
        "lib/h.txt": "",
        "app/BUILD.toml": FILEGROUP.format(name="app", srcs='["//lib:helper"]')
        + FILEGROUP.format(name="app2", srcs='[\n  "//libs:helpers",\n]'),
    })
    guard = guarded(root)
    result = pbuild("build", "//app:app", cwd=root)
    assert_user_error(result, 2, "app/BUILD.toml:3", "target //app:app", "no target 'helper' in //lib", "helpers")
    result = pbuild("build", "//app:app2", cwd=root)
    assert_user_error(result, 2, "app/BUILD.toml:6", "target //app:app2", "no package //libs", "did you mean //lib?")
    # on the command line too
    assert_user_error(pbuild("build", "//lib:helperz", cwd=root), 2, "no target 'helperz' in //lib", ":helpers")
    assert_user_error(pbuild("build", "//lb:helpers", cwd=root), 2, "no package //lb", "//lib")
    guard.assert_intact()


def test_near_name_hint_is_a_usable_label(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({
        "lib/BUILD.toml": FILEGROUP.format(name="helpers", srcs="[]"),
        "app/BUILD.toml": FILEGROUP.format(name="app", srcs='["//lib:helper"]'),
    })
    result = pbuild("build", "//app:app", cwd=root)
    assert_user_error(result, 2, "did you mean //lib:helpers")


# -- only the needed packages load --------------------------------------------------------------


def test_a_broken_unrelated_package_does_not_break_a_build(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({
        **GOOD_PACKAGE,
        "zz_broken/BUILD.toml": "[x\nthis is not toml",
        "other/BUILD.toml": '[y]\nrule = "no_such_rule"\n',
    })
    result = pbuild("build", "//good:x", cwd=root)
    assert result.code == 0, str(result)
    # //... needs every package, so now the broken one is read and reported
    assert_user_error(pbuild("build", "//...", cwd=root), 2, "BUILD.toml")


def test_loading_reads_only_the_named_package(workspace: WorkspaceFactory) -> None:
    root = workspace({
        "a/BUILD.toml": FILEGROUP.format(name="x", srcs='["//b:y"]'),
        "b/BUILD.toml": FILEGROUP.format(name="y", srcs="[]"),
        "c/BUILD.toml": "[x\nbroken",
    })
    loader = loader_for(root)
    assert loader.expand_patterns(["//a:x"]) == [Label("a", "x")]
    assert loader.target(Label("b", "y")).rule == "filegroup"
    assert set(loader._packages) == {"a", "b"}  # c was never read
    with pytest.raises(LoadError):
        loader.package("c")


def test_keys_inside_table_attributes_have_their_lines(workspace: WorkspaceFactory) -> None:
    root = workspace({"a/BUILD.toml": (
        '[s]\nrule = "stack"\n\n'                     # 1-3
        '[s.services.one]\nimage = ":i"\n'             # 4-5
        'healthcheck = { interval = "1s" }\n\n'        # 6-7
        '[s.services.two.healthcheck]\ntest = "x"\n'   # 8-9
        '\n[t]\nrule = "filegroup"\nsrcs = []\n'     # 10-13
    )})
    decl = loader_for(root).target(Label("a", "s"))
    lines = {key: where.line for key, where in decl.attr_locations.items()}
    assert lines == {"rule": 2, "services": 4, "services.one": 4, "services.one.image": 5, "services.one.healthcheck": 6,
                     "services.two.healthcheck": 8, "services.two.healthcheck.test": 9}
    assert loader_for(root).target(Label("a", "t")).attr_locations.keys() == {"rule", "srcs"}  # no tables, nothing more


# -- patterns -----------------------------------------------------------------------------------


@pytest.fixture
def patterned(workspace: WorkspaceFactory) -> Path:
    return workspace({
        "BUILD.toml": FILEGROUP.format(name="top", srcs="[]"),
        "a/BUILD.toml": FILEGROUP.format(name="a", srcs="[]") + FILEGROUP.format(name="x", srcs="[]"),
        "a/b/BUILD.toml": FILEGROUP.format(name="y", srcs="[]"),
        "a/b/c/BUILD.toml": FILEGROUP.format(name="z", srcs="[]"),
        "a/nopkg/readme.txt": "",
        "ab/BUILD.toml": FILEGROUP.format(name="w", srcs="[]"),
    })


@pytest.mark.parametrize(
    ("patterns", "current", "expected"),
    [
        (["//a:x"], "", ["//a:x"]),
        (["//a"], "", ["//a:a"]),
        ([":x"], "a", ["//a:x"]),
        (["//a:all"], "", ["//a:a", "//a:x"]),
        ([":all"], "a/b", ["//a/b:y"]),
        (["//a/..."], "", ["//a:a", "//a:x", "//a/b:y", "//a/b/c:z"]),
        (["//a/b/..."], "", ["//a/b:y", "//a/b/c:z"]),
        (["//..."], "", ["//:top", "//a:a", "//a:x", "//a/b:y", "//a/b/c:z", "//ab:w"]),
        (["//a:x", "//a:all"], "", ["//a:x", "//a:a"]),  # no duplicates, first mention first
    ],
)
def test_expand_patterns(patterned: Path, patterns: list[str], current: str, expected: list[str]) -> None:
    labels = loader_for(patterned).expand_patterns(patterns, current_package=current)
    assert [str(label) for label in labels] == expected


def test_patterns_that_match_nothing_are_errors(patterned: Path) -> None:
    loader = loader_for(patterned)
    with pytest.raises(LoadError, match="no package //a/nopkg"):
        loader.expand_patterns(["//a/nopkg:all"])
    with pytest.raises(LoadError, match="matches no targets"):
        loader.expand_patterns(["//a/nopkg/..."])
    with pytest.raises(LoadError, match="no folder"):
        loader.expand_patterns(["//nowhere/..."])


def test_pattern_shorthand_from_a_package_folder(patterned: Path, pbuild: Runner) -> None:
    result = pbuild("query", ":all", cwd=patterned / "a" / "b")
    assert result.code == 0, str(result)
    assert result.out.split() == ["//a/b:y"]


# -- globs, .pbuildignore, folders that are never packages ----------------------------------------


def test_glob_with_exclude(workspace: WorkspaceFactory) -> None:
    root = workspace({
        "p/BUILD.toml": "",
        "p/main.py": "", "p/util.py": "", "p/test_util.py": "", "p/notes.txt": "",
        "p/sub/deep.py": "", "p/sub/test_deep.py": "",
        "p/subpkg/BUILD.toml": "", "p/subpkg/hidden.py": "",  # another package: not globbed into p
        "p/__pycache__/main.cpython-311.pyc": "",
    })
    loader = loader_for(root)
    assert loader.glob("p", ["**/*.py"], ["**/test_*.py"]) == ["main.py", "sub/deep.py", "util.py"]
    # gitignore syntax: a leading / anchors at the package folder; "*.py" alone matches at any depth
    assert loader.glob("p", ["/*.py"], []) == ["main.py", "test_util.py", "util.py"]
    assert loader.glob("p", ["*.py"], ["test_*"]) == ["main.py", "sub/deep.py", "util.py"]
    assert loader.glob("p", ["*.txt", "sub/"], ["sub/test_*"]) == ["notes.txt", "sub/deep.py"]


def test_glob_in_a_target_builds_the_matched_files(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({
        "p/BUILD.toml": """
            [cat]
            rule = "genrule"
            srcs = { glob = ["**/*.txt"], exclude = ["skip/**", "*.tmp.txt"] }
            outs = ["all.txt"]
            cmd = "cat $(SRCS) > $@"
        """,
        "p/a.txt": "a\n", "p/b/b.txt": "b\n", "p/skip/s.txt": "s\n", "p/x.tmp.txt": "x\n",
        "p/ignored/i.txt": "i\n",
        ".pbuildignore": "p/ignored/\n",
    })
    result = pbuild("build", "//p:cat", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "all.txt").read_text() == "a\nb\n"


def test_bad_glob_table(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": FILEGROUP.format(name="x", srcs='{ globs = ["*.py"] }')})
    assert_user_error(pbuild("build", "//p:x", cwd=root), 2, "p/BUILD.toml:3", "target //p:x",
                      "glob = [...], exclude = [...]")


GLOB_FILES = {"p/a.txt": "a\n", "p/sub/b.txt": "b\n", "p/etc/conf.txt": "c\n"}


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('{ glob = ["../**"] }', "glob pattern '../**' leaves the package"),
        ('{ glob = ["*.txt"], exclude = ["sub/../../x"] }', "glob pattern 'sub/../../x' leaves the package"),
        ('{ glob = ["/etc/*"] }', "glob pattern '/etc/*' matches no files in //p (a leading / anchors a pattern "
                                  "at the package folder, not at /)"),
        ('{ glob = ["*.txt", "*.pyy"] }', "glob pattern '*.pyy' matches no files in //p"),
        ('{ glob = ["*.txt"], exclude = ["**"] }', "every file the glob ['*.txt'] matches in //p is excluded"),
        ('{ glob = ["sub//b.txt"] }', "has an empty path segment"),
        ('{ glob = ["./a.txt"] }', "has '.' as a path segment"),
        ('{ glob = [""] }', "glob pattern '' is empty"),
        ('{ glob = ["#a.txt"] }', "is a comment in gitignore syntax"),
        ('{ glob = ["*.txt"], allow_empty = "yes" }', "a file table must be { glob = [...], exclude = [...] }"),
        ('{ glob = ["*.txt", 3] }', "a file table must be { glob = [...], exclude = [...] }"),
    ],
)
def test_globs_that_cannot_mean_what_they_say(table: str, fragment: str, workspace: WorkspaceFactory,
                                              pbuild: Runner) -> None:
    root = workspace({**GLOB_FILES, "p/BUILD.toml": FILEGROUP.format(name="x", srcs=table)})
    if "/etc/*" in table:
        (root / "p" / "etc" / "conf.txt").unlink()  # the package has no etc/ of its own
        (root / "p" / "etc").rmdir()
    assert_user_error(pbuild("build", "//p:x", cwd=root), 2, "p/BUILD.toml:3", "target //p:x", fragment)


def test_allow_empty_and_anchored_globs(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({**GLOB_FILES, "p/BUILD.toml": """
        [none]
        rule = "genrule"
        srcs = { glob = ["*.pyy"], allow_empty = true }
        outs = ["none.txt"]
        cmd = "echo $(SRCS) > $@"

        [etc]
        rule = "genrule"
        srcs = { glob = ["/etc/*"] }
        outs = ["etc.txt"]
        cmd = "cat $(SRCS) > $@"
    """})
    result = pbuild("build", "//p:all", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "none.txt").read_text() == "\n"
    assert (root / "pbuild-out" / "p" / "etc.txt").read_text() == "c\n"  # the package's own etc/


def test_pbuildignore_hides_packages_and_files(workspace: WorkspaceFactory) -> None:
    root = workspace({
        ".pbuildignore": "# scratch space\nscratch/\n*.bak\n!keep.bak\n",
        "a/BUILD.toml": "", "a/x.py": "", "a/x.py.bak": "", "a/keep.bak": "",
        "scratch/BUILD.toml": FILEGROUP.format(name="s", srcs="[]"),
        "a/scratch/BUILD.toml": FILEGROUP.format(name="s", srcs="[]"),
    })
    loader = loader_for(root)
    assert list(loader.discover_packages("")) == ["a"]
    assert loader.package("scratch") is None
    assert loader.glob("a", ["**/*"], []) == ["keep.bak", "x.py"]


def test_output_and_venv_folders_are_never_packages(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    never = FILEGROUP.format(name="n", srcs="[]")
    root = workspace({
        "BUILD.toml": FILEGROUP.format(name="top", srcs='{ glob = ["**/*.txt"] }'),
        "top.txt": "",
        "pbuild-out/BUILD.toml": never, "pbuild-out/o.txt": "",
        ".venv/BUILD.toml": never, ".venv/lib/BUILD.toml": never, ".venv/v.txt": "",
        "a/pbuild-out/BUILD.toml": never,
        "a/.venv/BUILD.toml": never,
        "a/BUILD.toml": FILEGROUP.format(name="a", srcs="[]"),
    })
    loader = loader_for(root)
    assert list(loader.discover_packages("")) == ["", "a"]
    assert loader.package("pbuild-out") is None and loader.package(".venv") is None
    assert loader.glob("", ["**/*.txt"], []) == ["top.txt"]
    result = pbuild("query", "//...", cwd=root)
    assert result.code == 0, str(result)
    assert result.out.split() == ["//:top", "//a:a"]
    assert_user_error(pbuild("build", "//.venv:n", cwd=root), 2, "no package //.venv")


def test_workspace_plugins_must_be_a_list(tmp_path: Path) -> None:
    (tmp_path / "WORKSPACE.toml").write_text('[workspace]\nplugins = "rules.py"\n')
    with pytest.raises(WorkspaceError, match="list of paths"):
        find_workspace(str(tmp_path))
    assert Workspace(str(tmp_path)).path("") == str(tmp_path)
    assert os.path.basename(Workspace(str(tmp_path)).name) == tmp_path.name


def test_build_file_must_be_utf8(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"q/BUILD.toml": b'[a]\nrule = "filegroup"\nsrcs = ["\xff\xfe.txt"]\n'})
    assert_user_error(pbuild("build", "//q:a", cwd=root), 2, "q/BUILD.toml:3", "UTF-8")


def test_a_folder_in_a_file_list_is_explained(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": FILEGROUP.format(name="x", srcs='["data"]'), "p/data/f.txt": ""})
    result = pbuild("build", "//p:x", cwd=root)
    assert_user_error(result, 2, "p/BUILD.toml:3", "target //p:x", "'data' is a folder", "glob")


def test_a_duplicate_target_is_a_toml_error(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({"p/BUILD.toml": FILEGROUP.format(name="dup", srcs="[]") + "\n"
                      + FILEGROUP.format(name="dup", srcs="[]")})
    assert_user_error(pbuild("build", "//p:dup", cwd=root), 2, "p/BUILD.toml:5:", "twice", "hint:")
