"""The import directions between pbuild's packages (docs/architecture.md), read from every module.

Every ``.py`` file of every package in pyproject's ``[tool.setuptools] package-dir`` is parsed with
``ast``; an import is any ``import``/``from ... import`` at any level (function-local and
``TYPE_CHECKING`` ones too, relative ones resolved), and a string constant that names a pbuild
module (what ``importlib.import_module`` is given, as the rule set imports its families). A failure
lists every offending ``file:line`` with the import and the rule it breaks.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO


@dataclass(frozen=True)
class Import:
    """One module importing another: where (repo-relative path and line), who, what, and how."""

    path: str
    line: int
    importer: str
    imported: str
    by_name: bool = False  # a string naming the module, for importlib

    def __str__(self) -> str:
        how = " (by name)" if self.by_name else ""
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}{how}"


def package_dirs(repo: Path) -> dict[str, Path]:
    """Import package -> folder, as pyproject maps them (``pbuild.engine`` -> ``engine/``)."""
    with open(repo / "pyproject.toml", "rb") as handle:
        mapping = tomllib.load(handle)["tool"]["setuptools"]["package-dir"]
    return {package: repo / folder for package, folder in mapping.items()}


def modules(repo: Path) -> dict[str, Path]:
    """Every module of every mapped package: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs(repo).items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports_of(module: str, path: Path, known: Iterable[str], repo: Path) -> Iterator[Import]:
    """The pbuild modules ``module`` (the file ``path``) imports, each with its line."""
    known = set(known)
    is_package = path.name == "__init__.py"
    rel = path.relative_to(repo).as_posix()

    def found(node: ast.AST, name: str, by_name: bool = False) -> Import:
        return Import(rel, getattr(node, "lineno", 0), module, name, by_name)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pbuild."):
                    yield found(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            if not base.startswith("pbuild."):
                continue
            # ``from pbuild.engine import cli`` imports the module pbuild.engine.cli; names that are
            # not modules are all the one import of ``base``.
            targets = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
            for target in sorted(targets):
                yield found(node, target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            yield found(node, node.value, by_name=True)


def all_imports(repo: Path = REPO) -> list[Import]:
    known = modules(repo)
    found = [imp for name, path in known.items() for imp in imports_of(name, path, known, repo)]
    return sorted(found, key=lambda imp: (imp.path, imp.line, imp.imported))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@dataclass(frozen=True)
class Allowance:
    """An import that breaks a direction on purpose: ``importer`` may import ``imported`` (and,
    with ``subpackages``, what lies below it), for ``reason``."""

    importer: str
    imported: str
    reason: str
    subpackages: bool = False

    def allows(self, imp: Import) -> bool:
        if imp.importer != self.importer:
            return False
        return within(imp.imported, self.imported) if self.subpackages else imp.imported == self.imported


# The engine reaches rule families through the rule set, nowhere else.
ENGINE_ALLOWANCES = (
    Allowance("pbuild.engine.ruleset", "pbuild.rules", subpackages=True,
              reason="the rule set: it imports the built-in rule families (their RULES and COMMANDS) "
                     "by name, lazily"),
    Allowance("pbuild.engine.workspace", "pbuild.rules",
              reason="builtin_root() locates pbuild's built-in packages beside the rules package "
                     "(its __file__); no rule is used"),
    Allowance("pbuild.engine.uptodate", "pbuild.rules",
              reason="the analysis cache key hashes pbuild's own code: it walks the rules package's "
                     "folder (its __path__); no rule is used"),
    # Known debts, each one import: `pbuild lock` is one engine command whose flags reach several
    # families, and `pbuild run` tells an image target by the OCI family's provider.
    Allowance("pbuild.engine.commands", "pbuild.rules.python",
              reason="`pbuild lock --python/--tools` runs the Python family's lockers"),
    Allowance("pbuild.engine.commands", "pbuild.rules.debian",
              reason="`pbuild lock --debian` runs the Debian family's locker"),
    Allowance("pbuild.engine.run", "pbuild.rules.oci.providers",
              reason="`pbuild run` starts an image target (ImageInfo) under the launcher"),
)

RULE_API = ("pbuild.engine.api", "pbuild.engine.errors")


@dataclass(frozen=True)
class Direction:
    """One rule of the house: what modules of ``importers`` must not import."""

    importers: str
    forbidden: Callable[[str], bool]
    says: str
    allowances: tuple[Allowance, ...] = ()


DIRECTIONS = {
    "lib": Direction(
        "pbuild.lib", lambda m: any(within(m, p) for p in ("pbuild.engine", "pbuild.rules", "pbuild.tools")),
        "pbuild.lib is shared by everyone and imports none of engine, rules or tools"),
    "tools": Direction(
        "pbuild.tools", lambda m: within(m, "pbuild.engine") or within(m, "pbuild.rules"),
        "pbuild.tools (the launcher, the sandbox) imports no engine and no rules; only tools and lib"),
    "launcher": Direction(
        "pbuild.tools.launcher", lambda m: within(m, "pbuild.tools.stack"),
        "the launcher runs images without knowing stacks; pbuild.tools.stack builds on it, not the reverse"),
    "rules": Direction(
        "pbuild.rules", lambda m: within(m, "pbuild.engine") and m not in RULE_API,
        f"rules use only the rule API of the engine ({', '.join(RULE_API)}), besides lib, tools and rules"),
    "engine": Direction(
        "pbuild.engine", lambda m: within(m, "pbuild.rules"),
        "the engine imports rule families only through the rule set", ENGINE_ALLOWANCES),
}


def violations(direction: Direction, imports: Iterable[Import]) -> list[Import]:
    return [imp for imp in imports
            if within(imp.importer, direction.importers) and direction.forbidden(imp.imported)
            and not any(allowance.allows(imp) for allowance in direction.allowances)]


def report(direction: Direction, found: list[Import]) -> str:
    lines = [f"{len(found)} import(s) against the rule: {direction.says} (docs/architecture.md)"]
    lines += [f"  {imp}" for imp in found]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = all_imports()
    importers = {imp.importer.split(".")[1] for imp in found}
    assert {"engine", "lib", "rules", "tools"} <= importers, importers  # every package was read
    return found


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_imports_point_the_allowed_way(name: str, imports: list[Import]) -> None:
    direction = DIRECTIONS[name]
    found = violations(direction, imports)
    if found:
        pytest.fail(report(direction, found), pytrace=False)


def test_every_allowance_is_still_needed(imports: list[Import]) -> None:
    """An allowance no import uses any more is deleted, so the list says what is true."""
    stale = [f"{a.importer} -> {a.imported} ({a.reason})" for d in DIRECTIONS.values() for a in d.allowances
             if not any(a.allows(imp) for imp in imports)]
    assert not stale, "allowances no import needs; delete them:\n  " + "\n  ".join(stale)


def test_the_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Function-local, relative, ``from package import module``, TYPE_CHECKING and by-name imports
    are all found, with their lines; imports of other projects are not pbuild's business."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"pbuild.rules" = "rules"\n"pbuild.engine" = "engine"\n')
    (tmp_path / "engine").mkdir()
    for name in ("__init__", "api", "scheduler"):
        (tmp_path / "engine" / f"{name}.py").write_text("")
    (tmp_path / "rules" / "fam").mkdir(parents=True)
    (tmp_path / "rules" / "__init__.py").write_text("")
    (tmp_path / "rules" / "fam" / "__init__.py").write_text("from . import impl\n")
    (tmp_path / "rules" / "fam" / "impl.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "from pbuild.engine.api import rule\n"
        "from pbuild.engine import scheduler\n"
        "if TYPE_CHECKING:\n"
        "    from pbuild.engine.scheduler import Scheduler\n"
        "def run():\n"
        "    from ...engine import api\n"
        "    import pbuild.engine.scheduler\n"
        "    return importlib.import_module('pbuild.engine.scheduler')\n")
    found = {(imp.path, imp.line, imp.imported, imp.by_name) for imp in all_imports(tmp_path)}
    impl = "rules/fam/impl.py"
    assert found == {
        ("rules/fam/__init__.py", 1, "pbuild.rules.fam.impl", False),
        (impl, 3, "pbuild.engine.api", False),
        (impl, 4, "pbuild.engine.scheduler", False),
        (impl, 6, "pbuild.engine.scheduler", False),
        (impl, 8, "pbuild.engine.api", False),
        (impl, 9, "pbuild.engine.scheduler", False),
        (impl, 10, "pbuild.engine.scheduler", True),
    }
    rules = DIRECTIONS["rules"]
    text = report(rules, violations(rules, all_imports(tmp_path)))
    assert [line.strip() for line in text.splitlines()[1:]] == [
        f"{impl}:{line}: pbuild.rules.fam.impl imports pbuild.engine.scheduler{how}"
        for line, how in ((4, ""), (6, ""), (9, ""), (10, " (by name)"))]
