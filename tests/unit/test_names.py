"""One name per concept: no two exception classes of pbuild share a name.

An error is what callers catch and what readers grep for; two classes of one name (a layer that
cannot be built and a layer the launcher refuses, a Debian and a Python lock) read as one thing.
"""

from __future__ import annotations

import ast
import builtins
from collections import defaultdict

from tests.support.paths import REPO

_BUILTIN_ERRORS = {name for name, value in vars(builtins).items()
                   if isinstance(value, type) and issubclass(value, BaseException)}


def _exception_classes(sources: dict[str, str]) -> dict[str, list[str]]:
    """Exception class name -> the modules defining one (a base is an exception by its last name)."""
    classes: list[tuple[str, str, list[str]]] = []
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases]
                classes.append((node.name, module, bases))
    errors = set(_BUILTIN_ERRORS)
    while True:  # to a fixed point: subclasses of subclasses, across modules
        more = {name for name, _, bases in classes if name not in errors and errors.intersection(bases)}
        if not more:
            break
        errors |= more
    found: dict[str, list[str]] = defaultdict(list)
    for name, module, _ in classes:
        if name in errors:
            found[name].append(module)
    return found


def test_the_scan_sees_exceptions_through_their_bases() -> None:
    found = _exception_classes({
        "a.py": "class E(ValueError): pass\nclass F(E): pass\nclass Data: pass\n",
        "b.py": "import a\nclass F(a.E): pass\nclass Data: pass\n",
    })
    assert {n: m for n, m in found.items() if len(m) > 1} == {"F": ["a.py", "b.py"]}


def test_no_two_exception_classes_share_a_name() -> None:
    sources = {path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8")
               for top in ("engine", "rules", "tools", "lib") for path in sorted((REPO / top).rglob("*.py"))}
    found = _exception_classes(sources)
    assert len(found) > 20  # the scan works on the tree (PbuildError, LauncherError and theirs)
    assert {name: modules for name, modules in found.items() if len(modules) > 1} == {}
