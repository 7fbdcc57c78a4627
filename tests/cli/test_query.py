"""``pbuild query``: deps, rdeps, somepath, set operations and output formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pbuild.engine.analysis import Analyzer
from pbuild.engine.errors import LoadError
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader
from pbuild.engine.query import TargetGraph, evaluate, render
from pbuild.engine.ruleset import RuleSet
from pbuild.engine.workspace import find_workspace

from tests.support.runner import Runner, assert_user_error, write_tree

GRAPH = {
    "WORKSPACE.toml": "",
    "a/BUILD.toml": '[lib]\nrule = "filegroup"\nsrcs = ["x.txt"]\n',
    "a/x.txt": "",
    "b/BUILD.toml": '[mid]\nrule = "genrule"\nsrcs = ["//a:lib"]\nouts = ["m"]\ncmd = "cp $< $@"\n',
    "c/BUILD.toml": (
        '[top]\nrule = "genrule"\nsrcs = [":local", "//b:mid"]\nouts = ["t"]\ncmd = "cat $(SRCS) > $@"\n'
        '[local]\nrule = "filegroup"\nsrcs = ["y.txt"]\n'
        # a rule would refuse this target (no cmd), but query reads declarations only
        '[unfinished]\nrule = "genrule"\nsrcs = ["//a:lib"]\nouts = ["u"]\n'
    ),
    "c/y.txt": "",
    "d/BUILD.toml": '[other]\nrule = "filegroup"\nsrcs = []\n',
}


@pytest.fixture(scope="module")
def graph_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("query") / "ws"
    write_tree(root, GRAPH)
    return root


def query(root: Path, expr: str, cwd: Path | None = None) -> list[str]:
    workspace = find_workspace(str(root))
    loader = Loader(workspace, RuleSet(workspace))
    graph = TargetGraph(loader, Analyzer(loader, workspace.config))
    return sorted(str(label) for label in evaluate(expr, graph, str(cwd or root)))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("//c:top", ["//c:top"]),
        ("//...", ["//a:lib", "//b:mid", "//c:local", "//c:top", "//c:unfinished", "//d:other"]),
        ("deps(//c:top)", ["//a:lib", "//b:mid", "//c:local", "//c:top"]),
        ("deps(//c:top, 1)", ["//b:mid", "//c:local", "//c:top"]),
        ("deps(//c:top, 0)", ["//c:top"]),
        ("rdeps(//..., //a:lib)", ["//a:lib", "//b:mid", "//c:top", "//c:unfinished"]),
        ("rdeps(//c/..., //a:lib)", ["//a:lib", "//b:mid", "//c:top", "//c:unfinished"]),
        ("rdeps(//b/..., //a:lib)", ["//a:lib", "//b:mid"]),
        ("somepath(//c:top, //a:lib)", ["//a:lib", "//b:mid", "//c:top"]),
        ("somepath(//d:other, //a:lib)", []),
        ("allpaths(//c:top, //b:mid)", ["//b:mid", "//c:top"]),
        ("deps(//c:top) - deps(//b:mid)", ["//c:local", "//c:top"]),
        ("deps(//c:top) ^ deps(//c:unfinished)", ["//a:lib"]),
        ("//d:other + //b:mid", ["//b:mid", "//d:other"]),
        ("(//c:all - //c:top) + deps(//b:mid)", ["//a:lib", "//b:mid", "//c:local", "//c:unfinished"]),
    ],
)
def test_query_expressions(graph_ws: Path, expr: str, expected: list[str]) -> None:
    assert query(graph_ws, expr) == expected


def test_relative_labels_use_the_current_package(graph_ws: Path) -> None:
    assert query(graph_ws, "deps(:top, 1)", cwd=graph_ws / "c") == ["//b:mid", "//c:local", "//c:top"]


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("deps(//c:top", "expected )"),
        ("deps(//c:top))", "unexpected ')'"),
        ("rdeps(//...)", "rdeps takes two expressions"),
        ("//c:nope", "no target 'nope' in //c"),
        ("deps(//zz:top)", "no package //zz"),
        ("", "expected more"),
    ],
)
def test_bad_queries_are_load_errors(graph_ws: Path, expr: str, fragment: str) -> None:
    with pytest.raises(LoadError) as info:
        query(graph_ws, expr)
    assert fragment in info.value.message


def test_render_formats(graph_ws: Path) -> None:
    workspace = find_workspace(str(graph_ws))
    loader = Loader(workspace, RuleSet(workspace))
    graph = TargetGraph(loader, Analyzer(loader, workspace.config))
    labels = evaluate("deps(//b:mid)", graph, str(graph_ws))
    assert render(labels, graph, "label") == "//a:lib\n//b:mid\n"
    assert json.loads(render(labels, graph, "json")) == [
        {"label": "//a:lib", "rule": "filegroup", "deps": []},
        {"label": "//b:mid", "rule": "genrule", "deps": ["//a:lib"]},
    ]
    assert render(labels, graph, "dot") == (
        'digraph pbuild {\n  "//a:lib";\n  "//b:mid";\n  "//b:mid" -> "//a:lib";\n}\n'
    )
    assert Label("a", "lib") in labels


def test_query_cli(graph_ws: Path, pbuild: Runner) -> None:
    result = pbuild("query", "somepath(//c:top, //a:lib)", cwd=graph_ws)
    assert result.code == 0, str(result)
    assert result.out == "//a:lib\n//b:mid\n//c:top\n"
    assert result.err == ""  # query prints no build summary
    result = pbuild("query", "deps(//c:top)", "--output", "json", cwd=graph_ws / "a")
    assert result.code == 0, str(result)
    rows = {row["label"]: row for row in json.loads(result.out)}
    assert rows["//c:top"]["deps"] == ["//c:local", "//b:mid"]
    assert rows["//c:top"]["rule"] == "genrule"
    result = pbuild("query", "rdeps(//..., //a:lib)", "--output", "dot", cwd=graph_ws)
    assert result.code == 0, str(result)
    assert result.out.startswith("digraph pbuild {\n") and result.out.endswith("}\n")
    assert '"//c:unfinished" -> "//a:lib";' in result.out
    assert '"//b:mid" -> "//a:lib";' in result.out
    assert_user_error(pbuild("query", "deps(//c:top", cwd=graph_ws), 2, "expected )", "hint:")
    assert_user_error(pbuild("query", "//c:tpo", cwd=graph_ws), 2, "no target 'tpo' in //c", "//c:top")
    assert_user_error(pbuild("query", "//c:top", "--output", "xml", cwd=graph_ws), 2)


def test_query_writes_nothing_into_the_workspace(tmp_path: Path, pbuild: Runner) -> None:
    root = tmp_path / "ws"
    write_tree(root, GRAPH)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert pbuild("query", "deps(//c:top)", cwd=root).code == 0
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
