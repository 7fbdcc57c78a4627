"""Resolve the dependency closure of a few Debian packages from Packages indexes.

The resolver is deliberately simple, as apt's first choice is: for each dependency (Depends
and Pre-Depends) take an alternative already chosen if one satisfies it, else the first
alternative that some package satisfies, choosing the highest version; virtual packages are
satisfied through ``Provides``. Conflicts and Breaks are not considered: a closure that needs
them is out of scope for the small, pinned sets images use.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pbuild.engine.errors import PbuildError
from pbuild.rules.debian.control import Relation, parse_relations
from pbuild.rules.debian.version import Version, satisfies


class ResolveError(PbuildError):
    """A package that does not exist, or a dependency no package satisfies."""


@dataclass(frozen=True)
class Package:
    """One binary package of an index."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    depends: tuple[tuple[Relation, ...], ...]
    provides: tuple[Relation, ...]
    suite: str

    @classmethod
    def from_paragraph(cls, fields: dict[str, str], suite: str) -> Package:
        depends = []
        for key in ("Pre-Depends", "Depends"):
            if key in fields:
                depends += [tuple(group) for group in parse_relations(fields[key])]
        provides = tuple(r for group in parse_relations(fields.get("Provides", "")) for r in group)
        return cls(
            name=fields["Package"],
            version=fields["Version"],
            architecture=fields.get("Architecture", ""),
            filename=fields["Filename"],
            sha256=fields["SHA256"],
            size=int(fields["Size"]),
            depends=tuple(depends),
            provides=provides,
            suite=suite,
        )


class Index:
    """Packages of one architecture (plus ``all``) from one or more suites."""

    def __init__(self, packages: Iterable[Package]) -> None:
        self.by_name: dict[str, list[Package]] = {}
        self.providers: dict[str, list[tuple[Package, Relation]]] = {}
        for package in packages:
            self.by_name.setdefault(package.name, []).append(package)
            for provided in package.provides:
                self.providers.setdefault(provided.name, []).append((package, provided))
        for candidates in self.by_name.values():
            candidates.sort(key=lambda p: Version.parse(p.version), reverse=True)

    @classmethod
    def from_paragraphs(cls, paragraphs: Iterable[tuple[str, dict[str, str]]], architecture: str) -> Index:
        """Build from ``(suite, fields)`` pairs; packages of other architectures are skipped."""
        wanted = {architecture, "all"}
        return cls(
            Package.from_paragraph(fields, suite)
            for suite, fields in paragraphs
            if fields.get("Architecture") in wanted and "Filename" in fields and "SHA256" in fields
        )

    def candidates(self, relation: Relation) -> list[Package]:
        """Packages that satisfy ``relation``, best first (real packages by version, then providers)."""
        real = [p for p in self.by_name.get(relation.name, ())
                if not relation.op or satisfies(p.version, relation.op, relation.version)]
        virtual = []
        for package, provided in sorted(self.providers.get(relation.name, ()), key=lambda pp: pp[0].name):
            if relation.op and not (provided.op == "=" and satisfies(provided.version, relation.op, relation.version)):
                continue  # an unversioned Provides never satisfies a versioned dependency
            virtual.append(package)
        return real + virtual

    def suggest(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, list(self.by_name) + list(self.providers), n=5, cutoff=0.6)


@dataclass(frozen=True)
class Resolved:
    """One package of a closure, with the names of the packages that satisfied its dependencies."""

    package: Package
    dependencies: tuple[str, ...]


def resolve(index: Index, names: Sequence[str], *, context: str = "") -> list[Resolved]:
    """The closure of ``names`` (sorted by package name); every unknown name is reported at once."""
    where = f" ({context})" if context else ""
    missing = [name for name in names if not index.candidates(Relation(name))]
    if missing:
        lines = []
        for name in missing:
            near = index.suggest(name)
            lines.append(f"{name}" + (f" (did you mean: {', '.join(near)}?)" if near else ""))
        raise ResolveError(
            f"no such Debian package{where}: " + "; ".join(lines),
            hint="check the names with `apt-cache search`, and the suites and architecture of the target",
        )
    chosen: dict[str, Package] = {}
    deps_of: dict[str, set[str]] = {}
    # (relation group, who needs it, chain for messages)
    queue: list[tuple[tuple[Relation, ...], str, tuple[str, ...]]] = [((Relation(n),), "", ()) for n in names]
    while queue:
        group, needer, chain = queue.pop(0)
        picked = _pick(index, chosen, group)
        if picked is None:
            raise _unsatisfiable(index, group, chain, where)
        if needer:
            deps_of[needer].add(picked.name)
        if picked.name in chosen:
            continue
        chosen[picked.name] = picked
        deps_of[picked.name] = set()
        for dep in picked.depends:
            queue.append((dep, picked.name, (*chain, f"{picked.name} {picked.version}")))
    return [Resolved(chosen[n], tuple(sorted(deps_of[n] - {n}))) for n in sorted(chosen)]


def _pick(index: Index, chosen: dict[str, Package], group: tuple[Relation, ...]) -> Package | None:
    # An alternative already in the closure wins: it adds nothing.
    for relation in group:
        for package in index.candidates(relation):
            if chosen.get(package.name) == package:
                return package
    for relation in group:
        for package in index.candidates(relation):
            if package.name not in chosen:
                return package
    return None


def _unsatisfiable(index: Index, group: tuple[Relation, ...], chain: tuple[str, ...], where: str) -> ResolveError:
    wanted = " | ".join(str(r) for r in group)
    have = []
    for relation in group:
        versions = [p.version for p in index.by_name.get(relation.name, ())]
        have.append(f"{relation.name}: " + (", ".join(versions) if versions else "not in the index"))
    path = " -> ".join(chain) if chain else "(requested)"
    return ResolveError(
        f"unsatisfiable Debian dependency{where}: {path} needs {wanted}; available: {'; '.join(have)}",
        hint="pick packages from one suite (mixing suites breaks version constraints), or add the suite that has it",
    )
