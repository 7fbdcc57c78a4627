"""``pbuild query``: a small language over the target graph.

EXPR := TERM (('+' | '-' | '^') TERM)*
TERM := PATTERN | deps(EXPR) | deps(EXPR, DEPTH) | rdeps(EXPR, EXPR) | somepath(EXPR, EXPR)
      | allpaths(EXPR, EXPR) | '(' EXPR ')'

The graph is read from declarations (loading only, no analysis), so a query works even when a
rule would refuse its attributes.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable

from pbuild.engine.analysis import Analyzer
from pbuild.engine.api import RuleDef
from pbuild.engine.errors import LoadError
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader
from pbuild.engine.toolchainconf import rule_schema

_TOKEN = re.compile(r"\s*(?:(?P<op>[()+^,-])|(?P<word>[^\s()+^,]+))")


class TargetGraph:
    """Targets and their label dependencies, loaded lazily."""

    def __init__(self, loader: Loader, analyzer: Analyzer) -> None:
        self.loader = loader
        self._deps: dict[Label, tuple[Label, ...]] = {}

    def deps_of(self, label: Label) -> tuple[Label, ...]:
        if label in self._deps:
            return self._deps[label]
        decl = self.loader.target(label)
        definition = self.loader.ruleset.lookup(decl.rule)
        found: list[Label] = []
        if isinstance(definition, RuleDef):
            package = self.loader.package(label.package)
            for name, spec in rule_schema(definition).items():
                if name not in decl.attrs:
                    continue
                raw = decl.attrs[name]
                if spec.kind == "dict" and spec.fields and isinstance(raw, dict):
                    # A table of tables (a stack's services): its entries' label fields.
                    label_fields = [field for field, f in spec.fields if f.is_label]
                    found.extend(Label.parse(entry[field], current_package=label.package)
                                 for entry in raw.values() if isinstance(entry, dict) for field in label_fields
                                 if isinstance(entry.get(field), str) and entry[field].startswith((":", "//")))
                    continue
                if not spec.is_label:
                    continue
                entries = [raw] if isinstance(raw, str) else (raw if isinstance(raw, list) else [])
                for entry in entries:
                    if not isinstance(entry, str):
                        continue
                    if entry.startswith((":", "//")):
                        found.append(Label.parse(entry, current_package=label.package))
                    elif package is not None and entry in package.targets:
                        found.append(Label(label.package, entry))
        self._deps[label] = tuple(dict.fromkeys(found))
        return self._deps[label]

    def closure(self, roots: Iterable[Label], depth: int | None = None) -> set[Label]:
        seen: set[Label] = set()
        frontier = deque((r, 0) for r in roots)
        while frontier:
            label, level = frontier.popleft()
            if label in seen:
                continue
            self.loader.target(label)
            seen.add(label)
            if depth is not None and level >= depth:
                continue
            frontier.extend((d, level + 1) for d in self.deps_of(label))
        return seen


class _Parser:
    def __init__(self, text: str, graph: TargetGraph, package: str) -> None:
        self.tokens = [(m.group("op") or m.group("word")) for m in _TOKEN.finditer(text) if m.group(0).strip()]
        self.text = text
        self.pos = 0
        self.graph = graph
        self.package = package

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise LoadError(f"query {self.text!r}: expected {expected or 'more'} at token {self.pos + 1}",
                            hint="e.g. deps(//app:program) - //third_party/...")
        self.pos += 1
        return token

    def parse(self) -> set[Label]:
        result = self.expr()
        if self._peek() is not None:
            raise LoadError(f"query {self.text!r}: unexpected {self._peek()!r}")
        return result

    def expr(self) -> set[Label]:
        value = self.term()
        while self._peek() in ("+", "-", "^"):
            op = self._take()
            other = self.term()
            value = value | other if op == "+" else value - other if op == "-" else value & other
        return value

    def term(self) -> set[Label]:
        token = self._take()
        if token == "(":
            value = self.expr()
            self._take(")")
            return value
        if self._peek() == "(" and token in ("deps", "rdeps", "somepath", "allpaths"):
            self._take("(")
            first = self.expr()
            args: list[set[Label] | int] = [first]
            while self._peek() == ",":
                self._take(",")
                if token == "deps" and (self._peek() or "").isdigit():
                    args.append(int(self._take()))
                else:
                    args.append(self.expr())
            self._take(")")
            return self._function(token, args)
        return set(self.graph.loader.expand_patterns([token], self.package))

    def _function(self, name: str, args: list[set[Label] | int]) -> set[Label]:
        graph = self.graph
        if name == "deps":
            depth = args[1] if len(args) > 1 and isinstance(args[1], int) else None
            assert isinstance(args[0], set)
            return graph.closure(args[0], depth)
        if len(args) != 2 or not all(isinstance(a, set) for a in args):
            raise LoadError(f"query: {name} takes two expressions", hint=f"{name}(//a:x, //b:y)")
        first, second = args[0], args[1]
        assert isinstance(first, set) and isinstance(second, set)
        if name == "rdeps":
            universe = graph.closure(first)
            return {label for label in universe if graph.closure([label]) & second}
        universe = graph.closure(first)
        if name == "allpaths":
            reaches = {label for label in universe if graph.closure([label]) & second}
            return reaches
        # somepath: BFS from the sources to any target in second
        parents: dict[Label, Label | None] = {s: None for s in first}
        queue = deque(first)
        while queue:
            label = queue.popleft()
            if label in second:
                path = []
                node: Label | None = label
                while node is not None:
                    path.append(node)
                    node = parents[node]
                return set(path)
            for dep in graph.deps_of(label):
                if dep not in parents:
                    parents[dep] = label
                    queue.append(dep)
        return set()


def evaluate(expr: str, graph: TargetGraph, cwd: str) -> set[Label]:
    from pbuild.engine.workspace import current_package

    return _Parser(expr, graph, current_package(graph.loader.workspace, cwd)).parse()


def render(labels: set[Label], graph: TargetGraph, output: str) -> str:
    ordered = sorted(labels)
    if output == "label":
        return "".join(f"{label}\n" for label in ordered)
    if output == "json":
        rows = [
            {"label": str(label), "rule": graph.loader.target(label).rule,
             "deps": [str(d) for d in graph.deps_of(label) if d in labels]}
            for label in ordered
        ]
        return json.dumps(rows, indent=2) + "\n"
    lines = ["digraph pbuild {"]
    for label in ordered:
        lines.append(f'  "{label}";')
        for dep in graph.deps_of(label):
            if dep in labels:
                lines.append(f'  "{label}" -> "{dep}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
