"""Workspace rule plugins: the documented `stamp` example, written as a user would
(only pbuild.engine.api), built end to end; and what happens when a plugin is wrong."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
from pbuild.engine.gen_rule_docs import EXAMPLE_BUILD, EXAMPLE_PLUGIN, EXAMPLE_WORKSPACE

from tests.support.runner import Runner, WorkspaceFactory, assert_user_error

README = "pbuild example\n"
CHANGES = "1.3: stamps\n"


@pytest.fixture
def stamp_ws(workspace: WorkspaceFactory) -> Path:
    return workspace({
        "build_rules/stamp.py": EXAMPLE_PLUGIN,
        "BUILD.toml": EXAMPLE_BUILD,
        "README.txt": README,
        "CHANGES.txt": CHANGES,
    }, workspace_toml=EXAMPLE_WORKSPACE)


def test_the_example_uses_only_the_public_rule_api() -> None:
    tree = ast.parse(EXAMPLE_PLUGIN)
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    pbuild_modules = {m for m in modules if m and m.startswith("pbuild")}
    assert pbuild_modules == {"pbuild.engine.api"}


def statuses(path: Path) -> dict[tuple[str, str], str]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return {(e["label"], e["mnemonic"]): e["status"] for e in events if e["type"] == "action"}


def test_a_user_rule_builds_like_a_built_in_one(stamp_ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    events = tmp_path / "events.json"
    build = ("build", "//:notes", "//:changes", "--build-event-json", str(events))
    result = pbuild(*build, cwd=stamp_ws)
    assert result.code == 0, str(result)
    assert statuses(events) == {
        ("//:readme", "Stamp"): "executed",
        ("//:changes", "Stamp"): "executed",
        ("//:changes", "Checksum"): "executed",
        ("//:notes", "FileWrite"): "executed",
    }
    out = stamp_ws / "pbuild-out"
    readme = README + "version 1.2\n"
    changes = CHANGES + readme + "version 1.3\n"
    assert (out / "readme.txt").read_text() == readme
    assert (out / "changes.txt").read_text() == changes
    assert (out / "changes.sha256").read_text() == (
        f"{hashlib.sha256(changes.encode()).hexdigest()}  pbuild-out/changes.txt\n"
    )
    assert (out / "notes.md").read_text() == "- 1.2\n- 1.3\n"

    result = pbuild(*build, cwd=stamp_ws)
    assert result.code == 0 and set(statuses(events).values()) == {"cached"}, str(result)

    # a changed source re-runs the stamps; the notes only depend on the versions, so they stay cached
    (stamp_ws / "README.txt").write_text("new readme\n")
    result = pbuild(*build, cwd=stamp_ws)
    assert result.code == 0, str(result)
    assert statuses(events) == {
        ("//:readme", "Stamp"): "executed",
        ("//:changes", "Stamp"): "executed",
        ("//:changes", "Checksum"): "executed",
        ("//:notes", "FileWrite"): "cached",
    }
    assert (out / "changes.txt").read_text() == CHANGES + "new readme\nversion 1.2\nversion 1.3\n"

    # a change to the plugin itself is noticed too
    plugin = stamp_ws / "build_rules" / "stamp.py"
    plugin.write_text(plugin.read_text().replace('out.write(f"version {', 'out.write(f"release {')
                      .replace('version="1",  # bump', 'version="2",  # bump'))
    result = pbuild("build", "//:readme", cwd=stamp_ws)
    assert result.code == 0, str(result)
    assert (out / "readme.txt").read_text() == "new readme\nrelease 1.2\n"

    result = pbuild("query", "deps(//:notes)", cwd=stamp_ws)
    assert result.out.split() == ["//:changes", "//:notes", "//:readme"], str(result)


@pytest.mark.parametrize(
    ("replace", "by", "fragments"),
    [
        ('version = "1.2"', 'version = "v1.2"',
         ["BUILD.toml:4", "target //:readme", "version 'v1.2' must start with a digit", 'hint: version = "1.0"']),
        ('stamps = [":readme", ":changes"]', 'stamps = [":readme", ":txt"]\n[txt]\nrule = "filegroup"\n',
         ["target //:notes", "//:txt (a filegroup) does not provide StampInfo"]),
        ('srcs = ["README.txt"]', 'srcs = ["README.md"]',
         ["BUILD.toml:3", "target //:readme", "README.md is not one of the allowed file types (txt)"]),
        ('version = "1.2"', "version = 1.2",
         ["BUILD.toml:4", "attribute 'version' must be a string, got float 1.2",
          "The version to write"]),
        ("checksum = true", "checksum = true\nchecksums = false",
         ["BUILD.toml:11", "target //:changes", "unknown attribute 'checksums' for rule stamp",
          "did you mean 'checksum'?"]),
        ('version = "1.3"', "",
         ["target //:changes", "missing required attribute 'version'"]),
    ],
    ids=["ctx.fail", "providers", "file-types", "mistyped", "unknown-attr", "missing"],
)
def test_user_rule_attributes_are_checked_like_built_ins(
    stamp_ws: Path, pbuild: Runner, replace: str, by: str, fragments: list[str]
) -> None:
    build = stamp_ws / "BUILD.toml"
    assert replace in build.read_text()
    build.write_text(build.read_text().replace(replace, by))
    (stamp_ws / "README.md").write_text("")
    assert_user_error(pbuild("build", "//:notes", cwd=stamp_ws), 2, *fragments)


BROKEN_PLUGINS = [
    ("missing", None, ["plugin build_rules/stamp.py does not exist", "WORKSPACE.toml"]),
    ("raises", "raise RuntimeError('boom')\n",
     ["build_rules/stamp.py", "failed to load: RuntimeError: boom", "hint:"]),
    ("syntax", "def broken(:\n", ["build_rules/stamp.py", "failed to load: SyntaxError"]),
    ("no-rules", "X = 1\n", ["build_rules/stamp.py", "defines no RULES", "RULES = ["]),
    ("not-a-rule", "RULES = ['genrule']\n", ["RULES holds 'genrule', not a rule"]),
    ("clash", EXAMPLE_PLUGIN.replace('"stamp",\n', '"genrule",\n'),
     ["rule 'genrule' is already defined", "another name"]),
]


@pytest.mark.parametrize(("kind", "source", "fragments"), BROKEN_PLUGINS, ids=[b[0] for b in BROKEN_PLUGINS])
def test_broken_plugins_are_reported(workspace: WorkspaceFactory, pbuild: Runner, kind: str, source: str | None,
                                     fragments: list[str]) -> None:
    files: dict[str, str | bytes] = {"BUILD.toml": EXAMPLE_BUILD, "README.txt": README, "CHANGES.txt": CHANGES}
    if source is not None:
        files["build_rules/stamp.py"] = source
    root = workspace(files, workspace_toml=EXAMPLE_WORKSPACE)
    assert_user_error(pbuild("build", "//:readme", cwd=root), 2, *fragments)


CRASHING_PLUGIN = '''
from pbuild.engine.api import DefaultInfo, PbuildError, attr, rule


def crash(io, params):
    raise ValueError("rule author's mistake")


def refuse(io, params):
    raise PbuildError("the input is not what I expected", hint="give me something else")


@rule("crashy", doc="Crashes or refuses in its action.", attrs={"refuse": attr.boolean("Refuse politely.")})
def crashy(ctx):
    out = ctx.declare_file(ctx.label.name)
    ctx.actions.call(refuse if ctx.attr.refuse else crash, version="1", params={}, inputs=[], outputs=[out],
                     mnemonic="Crashy")
    return [DefaultInfo(files=(out,))]


@rule("analysis_crash", doc="Crashes in analysis.", attrs={})
def analysis_crash(ctx):
    return [DefaultInfo(files=(ctx.declare_file("../escape"),))]


RULES = [crashy, analysis_crash]
'''


def test_failing_in_process_actions(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    root = workspace({
        "rules.py": CRASHING_PLUGIN,
        "p/BUILD.toml": '[c]\nrule = "crashy"\n[r]\nrule = "crashy"\nrefuse = true\n[a]\nrule = "analysis_crash"\n',
    }, workspace_toml='[workspace]\nplugins = ["rules.py"]\n')
    result = pbuild("build", "//p:c", cwd=root)
    assert result.code == 1, str(result)
    # a crashing rule function is a bug in the rule: its traceback is shown, and whose bug it is
    assert "Crashy crashed: ValueError: rule author's mistake" in result.err
    assert "this is a bug in pbuild_plugin" in result.err
    result = pbuild("build", "//p:r", cwd=root)
    assert_user_error(result, 1, "target //p:r", "the input is not what I expected", "give me something else")
    result = pbuild("build", "//p:a", cwd=root)
    assert_user_error(result, 2, "target //p:a", "must be a relative path without '..'")


TREE_PLUGIN = '''
from pbuild.engine.api import DefaultInfo, attr, rule


@rule("tree", doc="A directory output.", attrs={"files": attr.string_list("Files to create in it.")})
def tree(ctx):
    d = ctx.declare_directory(ctx.label.name)
    script = f"mkdir -p {d.path}" + "".join(
        f"; mkdir -p $(dirname {d.path}/{f}); echo {f} > {d.path}/{f}" for f in ctx.attr.files)
    ctx.actions.run(argv=["/bin/sh", "-c", script], inputs=[], outputs=[d], mnemonic="Tree")
    return [DefaultInfo(files=(d,))]


@rule("use_tree", doc="Lists a tree.", attrs={"tree": attr.label("The tree.", required=True)})
def use_tree(ctx):
    out = ctx.declare_file(ctx.label.name + ".txt")
    d = ctx.attr.tree.files[0]
    ctx.actions.run(argv=["/bin/sh", "-c", f"(cd {d.path} && find . | sort) > {out.path}"], inputs=[d],
                    outputs=[out], mnemonic="UseTree")
    return [DefaultInfo(files=(out,))]


def list_tree(io, params):
    import os

    top = io.input_path(params["tree"])
    names = sorted(os.path.relpath(os.path.join(d, f), top) for d, _, fs in os.walk(top) for f in fs)
    with open(io.output_path(params["out"]), "w") as handle:
        handle.write("".join(name + "\\n" for name in names))


@rule("list_tree", doc="Lists a tree in-process.", attrs={"tree": attr.label("The tree.", required=True)})
def list_tree_rule(ctx):
    out = ctx.declare_file(ctx.label.name + ".txt")
    d = ctx.attr.tree.files[0]
    ctx.actions.call(list_tree, version="1", params={"tree": d.path, "out": out.path}, inputs=[d], outputs=[out],
                     mnemonic="ListTree")
    return [DefaultInfo(files=(out,))]


RULES = [tree, use_tree, list_tree_rule]
'''


@pytest.mark.parametrize("files", [
    pytest.param(["a.txt", "sub/b.txt"], id="with-files"),
    pytest.param([], id="empty"),
])
def test_directory_outputs_reach_pbuild_out_and_consumers(workspace: WorkspaceFactory, pbuild: Runner,
                                                          files: list[str]) -> None:
    root = workspace({
        "rules/tree.py": TREE_PLUGIN,
        "p/BUILD.toml": f'[t]\nrule = "tree"\nfiles = {json.dumps(files)}\n[u]\nrule = "use_tree"\ntree = ":t"\n',
    }, workspace_toml='[workspace]\nplugins = ["rules/tree.py"]\n')
    expected = sorted({".", *(f"./{f}" for f in files), *(f"./{f.rsplit('/', 1)[0]}" for f in files if "/" in f)})
    for attempt in ("executed", "from the cache"):
        result = pbuild("build", "//p:u", cwd=root)
        assert result.code == 0, f"{attempt}: {result}"
        assert (root / "pbuild-out" / "p" / "t").is_dir(), attempt
        assert (root / "pbuild-out" / "p" / "u.txt").read_text().split() == expected, attempt
        assert pbuild("clean", cwd=root).code == 0


def test_a_directory_output_loses_files_it_no_longer_has(workspace: WorkspaceFactory, pbuild: Runner) -> None:
    def build_file(files: list[str]) -> str:
        return (f'[t]\nrule = "tree"\nfiles = {json.dumps(files)}\n'
                '[lt]\nrule = "list_tree"\ntree = ":t"\n[u]\nrule = "use_tree"\ntree = ":t"\n')

    root = workspace({"rules/tree.py": TREE_PLUGIN, "p/BUILD.toml": build_file(["a.txt", "sub/b.txt"])},
                     workspace_toml='[workspace]\nplugins = ["rules/tree.py"]\n')
    assert pbuild("build", "//p:lt", "//p:u", cwd=root).code == 0
    assert (root / "pbuild-out" / "p" / "lt.txt").read_text() == "a.txt\nsub/b.txt\n"
    (root / "p" / "BUILD.toml").write_text(build_file(["a.txt"]))
    result = pbuild("build", "//p:lt", "//p:u", cwd=root)
    assert result.code == 0, str(result)
    assert (root / "pbuild-out" / "p" / "u.txt").read_text().split() == [".", "./a.txt"]  # the exec root is right
    assert (root / "pbuild-out" / "p" / "lt.txt").read_text() == "a.txt\n"
    assert sorted(p.name for p in (root / "pbuild-out" / "p" / "t").iterdir()) == ["a.txt"]



def count_analyses(stamp_ws: Path, calls: Path) -> dict[str, str]:
    """Make the stamp rule's implementation log each call to ``calls``; returns the env it needs."""
    plugin = stamp_ws / "build_rules" / "stamp.py"
    plugin.write_text(plugin.read_text().replace(
        "    version = ctx.attr.version\n",
        "    version = ctx.attr.version\n"
        "    import os\n"
        "    with open(os.environ['STAMP_CALLS'], 'a') as log:\n"
        "        log.write(str(ctx.label) + '\\n')\n", 1))
    return {"STAMP_CALLS": str(calls)}


def test_a_plugin_workspace_reuses_its_analysis(stamp_ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    """A second build that changed only a source's content reuses the saved analysis, also when
    the plugin's rules return the plugin's own providers and in-process functions (both pickled
    by module name): the rule implementation is not called again."""
    calls = tmp_path / "calls"
    env = count_analyses(stamp_ws, calls)
    events = tmp_path / "events.json"
    build = ("build", "//:readme", "//:notes", "--build-event-json", str(events))
    assert pbuild(*build, cwd=stamp_ws, env=env).code == 0
    assert sorted(calls.read_text().split()) == ["//:changes", "//:readme"]

    (stamp_ws / "README.txt").write_text("new readme\n")  # content only: analysis stays valid
    result = pbuild(*build, cwd=stamp_ws, env=env)
    assert result.code == 0 and result.err.count("\n") == 2, str(result)  # [1/1] Stamp and the summary
    assert statuses(events)[("//:readme", "Stamp")] == "executed"
    assert sorted(calls.read_text().split()) == ["//:changes", "//:readme"], "the rule was analyzed again"


def test_a_broken_saved_analysis_is_discarded_with_a_reason(stamp_ws: Path, pbuild: Runner, tmp_path: Path) -> None:
    """A saved analysis whose inputs are unchanged but whose payload does not unpickle is analyzed
    afresh with a message that says why (no silent fallback), and replaced."""
    import marshal

    calls = tmp_path / "calls"
    env = count_analyses(stamp_ws, calls)
    build = ("build", "//:readme")
    assert pbuild(*build, cwd=stamp_ws, env=env).code == 0
    [saved] = (pbuild.cache / "index").glob("*.analysis")
    version, entries, _ = marshal.loads(saved.read_bytes())
    saved.write_bytes(marshal.dumps((version, entries, b"not a pickle")))
    (stamp_ws / "README.txt").write_text("new readme\n")  # past the no-op stamp, not the analysis
    result = pbuild(*build, cwd=stamp_ws, env=env)
    assert result.code == 0, str(result)
    assert "pbuild: saved analysis discarded (UnpicklingError" in result.err, str(result)
    assert calls.read_text().split() == ["//:readme", "//:readme"]

    (stamp_ws / "README.txt").write_text("newer readme\n")
    result = pbuild(*build, cwd=stamp_ws, env=env)
    assert result.code == 0 and "discarded" not in result.err, str(result)
    assert calls.read_text().split() == ["//:readme", "//:readme"]  # the replacement was reused
