"""Loading: reading the BUILD.toml files a command needs into target declarations.

Loading knows TOML, labels, globs and target generators, but not what rules do: attribute
values stay raw here and are checked against the rule's schema in ``analysis``.
"""

from __future__ import annotations

import difflib
import marshal
import os
import threading
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbuild.engine.api import GeneratorContext, GeneratorDef
from pbuild.engine.errors import LoadError, Location
from pbuild.engine.labels import Label, Pattern, target_name_problem
from pbuild.engine.ruleset import RuleSet
from pbuild.engine.uptodate import DependencyRecorder
from pbuild.engine.workspace import ALWAYS_IGNORED, BUILD_FILE, IGNORE_FILE, Workspace, is_builtin_package
from pbuild.lib import atomicio
from pbuild.lib.gcpause import collector_paused
from pbuild.lib.tomlpos import load_toml, table_positions, toml_error_location, toml_error_message

if TYPE_CHECKING:
    import pathspec

_PARSE_CACHE_VERSION = 1


class ParseCache:
    """Parsed BUILD.toml files keyed by their stat, so a no-op build does not re-parse TOML.

    tomllib is pure Python and costs about a millisecond per hundred lines; a workspace of
    thousands of targets would spend most of a no-op build parsing unchanged files.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._entries: dict[str, Any] = {}
        self._dirty = False
        self._lock = threading.Lock()
        if path:
            try:
                with open(path, "rb") as handle:  # loads of bytes: marshal.load reads value by value
                    version, entries = marshal.loads(handle.read())
                if version == _PARSE_CACHE_VERSION:
                    self._entries = entries
            except (OSError, ValueError, EOFError, TypeError):
                pass

    def get(self, rel: str, key: tuple[int, ...]) -> Any:
        entry = self._entries.get(rel)
        return entry[1] if entry is not None and entry[0] == key else None

    def put(self, rel: str, key: tuple[int, ...], value: Any) -> None:
        try:
            marshal.dumps(value)
        except ValueError:
            return  # TOML dates and times are not marshalable; such files are just parsed each time
        with self._lock:
            self._entries[rel] = (key, value)
            self._dirty = True

    def save(self) -> None:
        if not self._path or not self._dirty:
            return
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        with atomicio.writing(self._path) as handle:
            marshal.dump((_PARSE_CACHE_VERSION, self._entries), handle)
        self._dirty = False


@dataclass(frozen=True)
class TargetDecl:
    """One target as written (or generated): its rule name and raw attribute values."""

    label: Label
    rule: str
    attrs: Mapping[str, Any]
    location: Location
    attr_locations: Mapping[str, Location]


@dataclass(frozen=True)
class Package:
    """A folder with a BUILD.toml, and its targets in file order."""

    name: str
    build_file: str  # workspace-relative
    targets: Mapping[str, TargetDecl]


class Loader:
    """Reads packages on demand and caches them for one command."""

    def __init__(self, workspace: Workspace, ruleset: RuleSet, parse_cache: ParseCache | None = None,
                 recorder: DependencyRecorder | None = None) -> None:
        self.workspace = workspace
        self.ruleset = ruleset
        self.parse_cache = parse_cache or ParseCache(None)
        self.recorder = recorder or DependencyRecorder()
        self._packages: dict[str, Package | None] = {}
        self.recorder.file(os.path.join(workspace.root, IGNORE_FILE))
        self._ignore = _read_ignore(workspace.root)

    # -- packages --------------------------------------------------------------------------

    def package(self, name: str) -> Package | None:
        """The package ``name`` ('' is the root), or None if the folder has no BUILD.toml."""
        if name in self._packages:
            return self._packages[name]
        package = self._read_package(name)
        self._packages[name] = package
        return package

    def _read_package(self, name: str) -> Package | None:
        builtin = is_builtin_package(name)
        if name and not builtin and self.is_ignored(name + "/"):
            return None
        build_rel = f"{name}/{BUILD_FILE}" if name else BUILD_FILE
        path = os.path.join(self.workspace.package_dir(name), BUILD_FILE)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.recorder.file(path)
            return None
        stat_key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        self.recorder.file(path, stat_key)
        cached = self.parse_cache.get(build_rel, stat_key)
        if cached is not None:
            data, tables, keys = cached
        else:
            data, tables, keys = _parse_build_file(path, build_rel)
            self.parse_cache.put(build_rel, stat_key, (data, tables, keys))
        targets: dict[str, TargetDecl] = {}
        for target_name, body in data.items():
            where = Location(build_rel, tables.get(target_name))
            if not isinstance(body, dict):
                raise LoadError(
                    f"{target_name!r} is not a target table",
                    location=Location(build_rel, keys.get(("", target_name))),
                    hint=f'write [{target_name}] with rule = "..." and the rule\'s attributes',
                )
            problem = target_name_problem(target_name)
            if problem:
                raise LoadError(
                    f"target name {target_name!r} is not valid: {problem}",
                    location=where,
                    hint="name targets with letters, digits and _ - . + @ = , ~ (and / between path parts)",
                )
            label = Label(name, target_name)
            attr_locations = {
                key: Location(build_rel, keys.get((target_name, key), tables.get(target_name)))
                for key in body
            }
            if any(isinstance(value, dict) for value in body.values()):
                attr_locations.update(nested_locations(build_rel, target_name, tables, keys))
            rule_name = body.get("rule")
            if not isinstance(rule_name, str):
                raise LoadError(
                    "missing rule = \"...\"",
                    location=where,
                    label=label,
                    hint="every target names its rule, e.g. rule = \"genrule\"",
                )
            attrs = {k: v for k, v in body.items() if k != "rule"}
            decl = TargetDecl(label, rule_name, attrs, where, attr_locations)
            definition = self.ruleset.lookup(rule_name)
            if definition is None:
                known = self.ruleset.names()
                near = difflib.get_close_matches(rule_name, known, n=3)
                raise LoadError(
                    f"unknown rule {rule_name!r}",
                    location=attr_locations.get("rule", where),
                    label=label,
                    hint=(f"did you mean {', '.join(near)}? " if near else "")
                    + f"known rules: {', '.join(sorted(known))}",
                )
            if isinstance(definition, GeneratorDef):
                generated_names = []
                for generated in self._expand(definition, decl, name):
                    problem = target_name_problem(generated.label.name)
                    if problem:
                        raise LoadError(f"generated target name {generated.label.name!r} is not valid: {problem}",
                                        location=where, label=label)
                    if generated.label.name in targets or generated.label.name in data:
                        raise LoadError(
                            f"generated target {generated.label} clashes with another target",
                            location=where,
                            label=label,
                        )
                    targets[generated.label.name] = generated
                    generated_names.append(":" + generated.label.name)
                # The generator's own label stands for everything it generated (as in Pants).
                decl = TargetDecl(label, "filegroup", {"srcs": generated_names}, where,
                                  {"srcs": where})
            targets[target_name] = decl
        return Package(name, build_rel, targets)

    def _expand(self, generator: GeneratorDef, decl: TargetDecl, package: str) -> list[TargetDecl]:
        from pbuild.engine.analysis import check_plain_attrs  # attribute checks live with analysis

        values = check_plain_attrs(generator.attrs, decl)
        context = GeneratorContext(
            label=decl.label,
            attr_values=values,
            package_dir=self.workspace.package_dir(package),
            location=decl.location,
            attr_locations=decl.attr_locations,
            on_read=self.recorder.file,
        )
        out = []
        for generated in generator.implementation(context):
            out.append(
                TargetDecl(
                    Label(package, generated.name),
                    generated.rule,
                    dict(generated.attrs),
                    decl.location,
                    {k: decl.location for k in generated.attrs},
                )
            )
        return out

    def target(self, label: Label, *, referenced_from: TargetDecl | None = None,
               attr_name: str | None = None) -> TargetDecl:
        """The declaration of ``label``; a clear error (with near names) when it does not exist."""
        package = self.package(label.package)
        where = referenced_from.attr_locations.get(attr_name or "", referenced_from.location) if referenced_from else None
        by = referenced_from.label if referenced_from else None
        if package is None:
            near = difflib.get_close_matches(label.package, list(self._nearby_packages(label.package)), n=3)
            raise LoadError(
                f"no package //{label.package} (no {BUILD_FILE} in {label.package or 'the workspace root'})"
                + (f" for {label}" if by else ""),
                location=where,
                label=by,
                hint=(f"did you mean {', '.join('//' + n for n in near)}?" if near else
                      f"create {label.package}/{BUILD_FILE} or fix the label"),
            )
        decl = package.targets.get(label.name)
        if decl is None:
            near = difflib.get_close_matches(label.name, list(package.targets), n=3)
            raise LoadError(
                f"no target {label.name!r} in //{label.package}" + (f" for {label}" if by else ""),
                location=where,
                label=by,
                hint=(f"did you mean {', '.join(_label_text(Label(label.package, n), by) for n in near)}?" if near else
                      f"targets in {package.build_file}: {', '.join(sorted(package.targets)) or 'none'}"),
            )
        return decl

    def _nearby_packages(self, name: str) -> Iterable[str]:
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        return self.discover_packages(parent) if os.path.isdir(self.workspace.path(parent)) else ()

    # -- patterns --------------------------------------------------------------------------

    def expand_patterns(self, patterns: Iterable[str], current_package: str = "") -> list[Label]:
        """The labels a command's patterns name, in a stable order; errors for empty patterns."""
        with collector_paused():  # loading builds a large, long-lived graph: see pbuild.lib.gcpause
            return self._expand_patterns(patterns, current_package)

    def _expand_patterns(self, patterns: Iterable[str], current_package: str) -> list[Label]:
        labels: dict[Label, None] = {}
        for text in patterns:
            pattern = Pattern.parse(text, current_package=current_package)
            if pattern.kind == "label":
                label = Label(pattern.package, pattern.name)
                self.target(label)
                labels[label] = None
                continue
            if pattern.kind == "package":
                names = [pattern.package]
            else:
                names = list(self.discover_packages(pattern.package))
            found = False
            for name in names:
                package = self.package(name)
                if package is None:
                    if pattern.kind == "package":
                        self.target(Label(name, "all"))  # raises the missing-package error
                    continue
                for target_name in package.targets:
                    labels[Label(name, target_name)] = None
                    found = True
            if not found:
                raise LoadError(f"pattern {pattern} matches no targets",
                                hint="check the path; `pbuild query //...` lists all targets")
        return list(labels)

    def discover_packages(self, below: str) -> Iterator[str]:
        """Packages at or below folder ``below``, skipping ignored folders, in sorted order."""
        top = self.workspace.path(below)
        if not os.path.isdir(top):
            raise LoadError(f"no folder {below!r} in the workspace", hint="check the pattern")
        stack = [below]
        while stack:
            rel = stack.pop()
            abs_dir = self.workspace.path(rel)
            self.recorder.directory(abs_dir)
            try:
                entries = sorted(os.scandir(abs_dir), key=lambda e: e.name, reverse=True)
            except OSError:
                continue
            subdirs = []
            has_build = False
            for entry in entries:
                if entry.name == BUILD_FILE and entry.is_file():
                    has_build = True
                elif entry.is_dir(follow_symlinks=False) and entry.name not in ALWAYS_IGNORED:
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    if not self.is_ignored(child + "/") and not entry.name.startswith(".pbuild"):
                        subdirs.append(child)
            if has_build:
                yield rel
            stack.extend(subdirs)

    # -- globs -----------------------------------------------------------------------------

    def is_ignored(self, relative: str) -> bool:
        parts = relative.strip("/").split("/")
        if any(part in ALWAYS_IGNORED for part in parts):
            return True
        return self._ignore is not None and self._ignore.match_file(relative)

    def glob(self, package: str, include: list[str], exclude: list[str], *, allow_empty: bool = False) -> list[str]:
        """Files of ``package`` matching ``include`` and not ``exclude`` (gitignore-style patterns).

        Sub-packages (folders with their own BUILD.toml) are not searched, as in Bazel. As in Bazel
        too, a pattern that could never match (``../x``, ``a//b``) is an error, and so, unless
        ``allow_empty``, is an include pattern that matches nothing or a result that is empty.
        """
        import pathspec  # imported on first glob: it costs tens of ms at start-up

        for pattern in (*include, *exclude):
            problem = glob_pattern_problem(pattern)
            if problem:
                raise LoadError(f"glob pattern {pattern!r} {problem}",
                                hint="glob patterns are paths inside the package folder, in gitignore syntax")
        spec = pathspec.PathSpec.from_lines("gitignore", include)
        not_spec = pathspec.PathSpec.from_lines("gitignore", exclude) if exclude else None
        # Which include patterns matched anything (negations "!x" only take away, so they need not).
        unmatched = {i: p for i, p in enumerate(spec.patterns) if p.include} if not allow_empty else {}
        base = self.workspace.path(package)
        results: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            self.recorder.directory(dirpath)
            rel_dir = os.path.relpath(dirpath, base)
            rel_dir = "" if rel_dir == "." else rel_dir
            kept = []
            for d in sorted(dirnames):
                rel = f"{rel_dir}/{d}" if rel_dir else d
                ws_rel = f"{package}/{rel}" if package else rel
                if self.is_ignored(ws_rel + "/") or os.path.exists(os.path.join(dirpath, d, BUILD_FILE)):
                    continue
                kept.append(d)
            dirnames[:] = kept
            for f in sorted(filenames):
                rel = f"{rel_dir}/{f}" if rel_dir else f
                ws_rel = f"{package}/{rel}" if package else rel
                if f == BUILD_FILE or self.is_ignored(ws_rel):
                    continue
                for i in [i for i, p in unmatched.items() if p.match_file(rel) is not None]:
                    del unmatched[i]
                if spec.match_file(rel) and not (not_spec and not_spec.match_file(rel)):
                    results.append(rel)
        if unmatched:
            pattern = include[min(unmatched)]
            raise LoadError(
                f"glob pattern {pattern!r} matches no files in //{package}"
                + (" (a leading / anchors a pattern at the package folder, not at /)" if pattern.startswith("/") else ""),
                hint="fix the pattern, or add allow_empty = true to the glob table if matching nothing is intended",
            )
        if not results and not allow_empty and include:
            raise LoadError(f"every file the glob {include} matches in //{package} is excluded",
                            hint="fix the patterns, or add allow_empty = true to the glob table")
        return sorted(results)


def nested_locations(build_rel: str, target_name: str, tables: Mapping[str, int],
                     keys: Mapping[tuple[str, str], int]) -> dict[str, Location]:
    """Lines of the keys inside a target's table attributes, by dotted path below the target:
    ``[web.services.backend]`` gives ``services.backend`` and its ``image = ...`` line
    ``services.backend.image``. ``RuleContext.location`` falls back along the dots, so a key of an
    inline table (``healthcheck = { interval = ... }``) is blamed on the line that holds it."""
    prefix = target_name + "."
    found: dict[str, Location] = {}
    for table, line in tables.items():
        if table.startswith(prefix):
            sub = table[len(prefix):]
            found[sub] = Location(build_rel, line)
            attr = sub.split(".", 1)[0]
            if (target_name, attr) not in keys:  # written only through sub-table headers
                found.setdefault(attr, Location(build_rel, line))
    for (table, key), line in keys.items():
        if table.startswith(prefix):
            found[f"{table[len(prefix):]}.{key}"] = Location(build_rel, line)
    return found


def glob_pattern_problem(pattern: str) -> str | None:
    """Why a glob pattern can never match a file of the package (so it is a mistake), or None."""
    if not pattern.strip():
        return "is empty"
    if pattern.startswith("#"):
        return "is a comment in gitignore syntax; write \\# for a file name that starts with #"
    body = pattern.removeprefix("!").removeprefix("/").removesuffix("/")
    parts = body.split("/")
    if ".." in parts:
        return "leaves the package: globs match only files inside the package folder (use a label for others)"
    if "." in parts:
        return "has '.' as a path segment; leave it out"
    if "" in parts:
        return "has an empty path segment ('//')"
    return None


def _read_ignore(root: str) -> pathspec.PathSpec[Any] | None:
    try:
        with open(os.path.join(root, IGNORE_FILE), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    import pathspec

    return pathspec.PathSpec.from_lines("gitignore", lines)


def _parse_build_file(path: str, build_rel: str) -> tuple[dict[str, Any], dict[str, int], dict[tuple[str, str], int]]:
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        data = load_toml(raw)
    except tomllib.TOMLDecodeError as exc:
        message, hint = toml_error_message(exc, 'fix the syntax (targets are tables: [name] with rule = "...")')
        raise LoadError(message, location=toml_error_location(build_rel, exc), hint=hint) from None
    tables, keys = table_positions(raw.decode("utf-8"))
    return data, tables, keys


def _label_text(label: Label, referenced_by: Label | None) -> str:
    """``:name`` when written in the same package, else the full label."""
    if referenced_by is not None and referenced_by.package == label.package:
        return f":{label.name}"
    return str(label)
