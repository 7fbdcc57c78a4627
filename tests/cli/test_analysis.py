"""Analysis: attribute checks against rule schemas, cycles, output clashes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.analysis import Analyzer
from pbuild.engine.api import DefaultInfo, File, ProcessAction
from pbuild.engine.errors import AnalysisError, LoadError, PbuildError
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader
from pbuild.engine.ruleset import RuleSet
from pbuild.engine.workspace import find_workspace

from tests.support.runner import GOOD_PACKAGE, Guard, Runner, assert_user_error, write_tree

BAD_TARGETS = """
[unknown]
rule = "genrule"
outs = ["u"]
cmd = "true"
srcz = ["a"]

[mistyped]
rule = "genrule"
outs = "m.txt"
cmd = "true"

[missing]
rule = "genrule"
outs = ["mm"]

[several]
rule = "genrule"
outz = ["x"]

[c1]
rule = "filegroup"
srcs = [":c2"]

[c2]
rule = "filegroup"
srcs = ["//q:c3"]

[d1]
rule = "genrule"
outs = ["same.txt"]
cmd = "echo 1 > $@"

[d2]
rule = "genrule"
outs = ["same.txt"]
cmd = "echo 2 > $@"

[both]
rule = "filegroup"
srcs = [":d1", ":d2"]

[twoouts]
rule = "genrule"
outs = ["a", "b"]
cmd = "echo > $@"

[loc]
rule = "genrule"
outs = ["l"]
cmd = "cat $(location :d1) > $@"

[nofile]
rule = "filegroup"
srcs = ["nothere.txt"]

[self]
rule = "filegroup"
srcs = [":self"]

[escape]
rule = "genrule"
outs = ["../../etc/x"]
cmd = "true"

[badlabel]
rule = "filegroup"
srcs = ["//p:a:b"]
"""

# (target, exit code, fragments of stderr). Line numbers point at the attribute, else the table.
CASES = [
    ("unknown", ["p/BUILD.toml:5", "target //p:unknown", "unknown attribute 'srcz'", "did you mean 'srcs'?",
                 "genrule accepts: cmd, env, message, outs, srcs, toolchain, tools"]),
    ("mistyped", ["p/BUILD.toml:9", "target //p:mistyped", "attribute 'outs' must be a list of file names",
                  "got str 'm.txt'", "hint: Files the command writes"]),
    ("missing", ["p/BUILD.toml:12", "target //p:missing", "missing required attribute 'cmd'", "add cmd = ..."]),
    # every problem of a target at once, not one per run
    ("several", ["3 problems", "unknown attribute 'outz'", "did you mean 'outs'?",
                 "missing required attribute 'outs'", "missing required attribute 'cmd'"]),
    ("c1", ["dependency cycle: //p:c1 -> //p:c2 -> //q:c3 -> //p:c1", "break the cycle"]),
    ("self", ["p/BUILD.toml:56", "dependency cycle: //p:self -> //p:self"]),
    ("both", ["output pbuild-out/p/same.txt is declared by both //p:d1 and //p:d2", "another name"]),
    ("twoouts", ["p/BUILD.toml:45", "target //p:twoouts", "attribute 'cmd'", "$@ needs exactly one output",
                 "use $(OUTS)"]),
    ("loc", ["p/BUILD.toml:50", "$(location :d1): :d1 is not in srcs or tools", "list the label in srcs"]),
    ("nofile", ["p/BUILD.toml:54", "target //p:nofile", "file 'nothere.txt' does not exist in //p",
                "create p/nothere.txt"]),
    ("escape", ["p/BUILD.toml:62", "target //p:escape", "must be a relative path without '..'"]),
    ("badlabel", ["p/BUILD.toml:67", "target //p:badlabel", "'//p:a:b' is not a valid label"]),
]


@pytest.fixture(scope="module")
def bad_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Runner, Guard]]:
    tmp = tmp_path_factory.mktemp("analysis")
    root = tmp / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        **GOOD_PACKAGE,
        "p/BUILD.toml": BAD_TARGETS,
        "q/BUILD.toml": '[c3]\nrule = "filegroup"\nsrcs = ["//p:c1"]\n',
    })
    runner = Runner(tmp)
    result = runner("build", "//good:x", cwd=root)
    assert result.code == 0, str(result)
    yield root, runner, Guard(root, runner.cache)


@pytest.mark.parametrize(("target", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_bad_target_is_reported_with_where_what_and_how(
    bad_workspace: tuple[Path, Runner, Guard], target: str, fragments: list[str]
) -> None:
    root, runner, guard = bad_workspace
    result = runner("build", f"//p:{target}", cwd=root)
    assert_user_error(result, 2, *fragments)
    guard.assert_intact()


def test_same_output_is_refused_even_when_one_target_is_built(bad_workspace: tuple[Path, Runner, Guard]) -> None:
    root, runner, _ = bad_workspace
    assert_user_error(runner("build", "//p:d1", cwd=root), 2, "declared by both //p:d1 and //p:d2")


# -- attribute types, in-process (fast) ------------------------------------------------------------

TYPED_PLUGIN = '''
from dataclasses import dataclass
from pbuild.engine.api import DefaultInfo, Provider, attr, rule


@dataclass(frozen=True)
class ToolInfo(Provider):
    name: str


@rule("tool", doc="A provider of ToolInfo.", attrs={"tool_name": attr.string("Name.", default="t")})
def tool(ctx):
    return [ToolInfo(ctx.attr.tool_name)]


@rule(
    "typed",
    doc="A rule with one attribute of each kind.",
    attrs={
        "mode": attr.string("One of fast, slow.", values=("fast", "slow"), default="fast"),
        "count": attr.integer("A number.", default=1),
        "flag": attr.boolean("A switch."),
        "env": attr.string_dict("Variables."),
        "names": attr.string_list("Names."),
        "settings": attr.dict("Free-form settings."),
        "text": attr.label("A .txt file.", allow_files=["txt"]),
        "tools": attr.label_list("Tools.", providers=[ToolInfo]),
        "deps": attr.label_list("Labels only."),
        "out": attr.output("An output."),
    },
)
def typed(ctx):
    seen = {
        "mode": ctx.attr.mode, "count": ctx.attr.count, "flag": ctx.attr.flag, "env": ctx.attr.env,
        "names": list(ctx.attr.names), "settings": ctx.attr.settings,
        "text": ctx.file.text.path if ctx.attr.text else None,
        "tools": [t[ToolInfo].name for t in ctx.attr.tools],
        "out": ctx.attr.out.path if ctx.attr.out else None,
    }
    return [DefaultInfo(), Seen(seen)]


@dataclass(frozen=True)
class Seen(Provider):
    values: dict


RULES = [tool, typed]
'''


def analyzer_for(root: Path) -> Analyzer:
    workspace = find_workspace(str(root))
    return Analyzer(Loader(workspace, RuleSet(workspace)), workspace.config)


@pytest.fixture
def typed_ws(tmp_path: Path) -> Path:
    root = tmp_path / "typed"
    write_tree(root, {
        "WORKSPACE.toml": '[workspace]\nplugins = ["rules/typed.py"]\n',
        "rules/typed.py": TYPED_PLUGIN,
        "t/BUILD.toml": '[hammer]\nrule = "tool"\ntool_name = "hammer"\n[plain]\nrule = "filegroup"\n',
        "t/notes.txt": "", "t/notes.md": "",
    })
    return root


def analyze_one(root: Path, body: str) -> object:
    (root / "t" / "BUILD.toml").write_text(
        '[hammer]\nrule = "tool"\ntool_name = "hammer"\n[plain]\nrule = "filegroup"\n[x]\nrule = "typed"\n' + body
    )
    graph = analyzer_for(root).analyze([Label("t", "x")])
    target = graph.targets[Label("t", "x")].as_target()
    return next(p for p in target.providers if type(p).__name__ == "Seen").values  # type: ignore[attr-defined]


def test_every_attribute_kind_reaches_the_rule_typed(typed_ws: Path) -> None:
    values = analyze_one(typed_ws, """
mode = "slow"
count = 3
flag = true
env = { A = "1" }
names = ["n1", "n2"]
settings = { nested = { k = [1, 2] } }
text = "notes.txt"
tools = [":hammer"]
out = "o.bin"
""")
    assert values == {
        "mode": "slow", "count": 3, "flag": True, "env": {"A": "1"}, "names": ["n1", "n2"],
        "settings": {"nested": {"k": [1, 2]}}, "text": "t/notes.txt", "tools": ["hammer"],
        "out": "pbuild-out/t/o.bin",
    }


def test_defaults_apply_when_attributes_are_absent(typed_ws: Path) -> None:
    values = analyze_one(typed_ws, "")
    assert values == {"mode": "fast", "count": 1, "flag": False, "env": {}, "names": [], "settings": {},
                      "text": None, "tools": [], "out": None}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('mode = "medium"', "must be one of 'fast', 'slow', got 'medium'"),
        ('count = "3"', "attribute 'count' must be an integer, got str '3'"),
        ("count = true", "attribute 'count' must be an integer, got bool True"),
        ('flag = "yes"', "attribute 'flag' must be true or false"),
        ("env = { A = 1 }", "attribute 'env' must be a table of strings"),
        ('names = "n1"', "attribute 'names' must be a list of strings"),
        ("settings = 3", "attribute 'settings' must be a table"),
        ("text = 3", "attribute 'text' must be a label or file name"),
        ('text = "notes.md"', "notes.md is not one of the allowed file types (txt)"),
        ('tools = [":plain"]', "//t:plain (a filegroup) does not provide ToolInfo"),
        ('deps = ["notes.txt"]', "attribute 'deps' takes labels, got 'notes.txt'"),
        ('out = ["a"]', "attribute 'out' must be a file name"),
    ],
)
def test_mistyped_attribute_names_the_line_and_the_expected_type(typed_ws: Path, line: str, fragment: str) -> None:
    with pytest.raises(PbuildError) as info:
        analyze_one(typed_ws, line + "\n")
    error = info.value
    assert isinstance(error, LoadError | AnalysisError)
    assert fragment in error.message
    assert str(error.location) == "t/BUILD.toml:8"  # the attribute's own line
    assert error.label == Label("t", "x")
    assert "Traceback" not in error.render()


def test_common_attributes_are_accepted_by_every_rule(typed_ws: Path) -> None:
    values = analyze_one(typed_ws, 'tags = ["manual"]\nvisibility = ["//visibility:public"]\n')
    assert values["mode"] == "fast"  # type: ignore[index]


def test_genrule_declares_one_sandboxed_action_with_expanded_command(tmp_path: Path) -> None:
    root = tmp_path / "g"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": """
            [gen]
            rule = "genrule"
            srcs = ["a.txt", "sub/b.txt", "//q:data"]
            tools = [":tool"]
            outs = ["out/one.txt", "two.txt"]
            cmd = "bash $(location :tool) $(SRCS) > $(location //q:data).x; echo $(OUTS) $$HOME"
            env = { MODE = "x" }
            message = "Generating"

            [tool]
            rule = "filegroup"
            srcs = ["tool.sh"]
        """,
        "p/a.txt": "", "p/sub/b.txt": "", "p/tool.sh": "",
        "q/BUILD.toml": '[data]\nrule = "filegroup"\nsrcs = ["d.txt"]\n',
        "q/d.txt": "",
    })
    graph = analyzer_for(root).analyze([Label("p", "gen")])
    configured = graph.targets[Label("p", "gen")]
    (action,) = configured.actions
    assert isinstance(action, ProcessAction)
    assert action.mnemonic == "Genrule"
    assert action.workdir == "p"  # runs in the package's folder
    assert action.argv[:2] == ("/bin/bash", "-c")
    assert action.argv[2] == ("bash tool.sh a.txt sub/b.txt ../q/d.txt > ../q/d.txt.x; "
                              "echo ../pbuild-out/p/out/one.txt ../pbuild-out/p/two.txt $HOME")
    assert {f.path for f in action.inputs} == {"p/a.txt", "p/sub/b.txt", "q/d.txt", "p/tool.sh"}
    assert [f.path for f in action.outputs] == ["pbuild-out/p/out/one.txt", "pbuild-out/p/two.txt"]
    assert dict(action.env) == {"MODE": "x"}
    assert action.progress == "Generating"
    assert configured.as_target()[DefaultInfo].files == action.outputs
    assert set(configured.deps) == {Label("q", "data"), Label("p", "tool")}



def test_genrule_location_of_a_source_file(tmp_path: Path) -> None:
    root = tmp_path / "g"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": '[g]\nrule = "genrule"\ntools = ["tool.sh"]\nouts = ["o"]\ncmd = "sh $(location tool.sh) > $@"\n',
        "p/tool.sh": "",
    })
    graph = analyzer_for(root).analyze([Label("p", "g")])
    (action,) = graph.targets[Label("p", "g")].actions
    assert action.argv[2] == "sh tool.sh > ../pbuild-out/p/o"


def test_genrule_dollar_at_and_dollar_lt(tmp_path: Path) -> None:
    root = tmp_path / "g"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "BUILD.toml": '[up]\nrule = "genrule"\nsrcs = ["in.txt"]\nouts = ["up.txt"]\ncmd = "tr a-z A-Z < $< > $@"\n',
        "in.txt": "",
    })
    graph = analyzer_for(root).analyze([Label("", "up")])
    (action,) = graph.targets[Label("", "up")].actions
    # root package: paths are workspace-relative, outputs directly under pbuild-out/
    assert action.argv[2] == "tr a-z A-Z < in.txt > pbuild-out/up.txt"
    assert action.outputs == (File("pbuild-out/up.txt", is_source=False),)


def test_actions_for_orders_dependencies_first(tmp_path: Path) -> None:
    root = tmp_path / "g"
    chain = "".join(
        f'[s{i}]\nrule = "genrule"\nsrcs = [":s{i - 1}"]\nouts = ["s{i}.txt"]\ncmd = "cp $< $@"\n' for i in range(1, 6)
    )
    write_tree(root, {
        "WORKSPACE.toml": "",
        "c/BUILD.toml": '[s0]\nrule = "genrule"\nouts = ["s0.txt"]\ncmd = "echo > $@"\n' + chain,
    })
    graph = analyzer_for(root).analyze([Label("c", "s5")])
    order = graph.actions_for(graph.targets[Label("c", "s5")].as_target().files)
    assert [str(a.owner) for a in order] == [f"//c:s{i}" for i in range(6)]


def test_an_output_inside_another_output_is_refused(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, {
        "WORKSPACE.toml": "",
        "p/BUILD.toml": '[x]\nrule = "genrule"\nouts = ["x"]\ncmd = "echo > $@"\n'
                        '[y]\nrule = "genrule"\nouts = ["x/y"]\ncmd = "echo > $@"\n',
    })
    assert_user_error(pbuild("build", "//p:all", cwd=root), 2, "pbuild-out/p/x", "//p:x", "//p:y")
