"""Analysis: checking attributes against rule schemas and running rule implementations.

The result is an :class:`ActionGraph`: every action any analyzed target declared, indexed by the
files they produce, plus each target's providers.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from pbuild.engine.api import (
    COMMON_ATTRS,
    HOST_TOOLCHAIN,
    OUT_DIR,
    Action,
    Attr,
    DefaultInfo,
    File,
    Provider,
    RuleContext,
    RuleDef,
    Target,
    Toolchain,
    ToolchainInfo,
    nearest_location,
)
from pbuild.engine.errors import AnalysisError, LoadError, Location, PbuildError
from pbuild.engine.labels import Label
from pbuild.engine.loading import Loader, TargetDecl
from pbuild.engine.toolchainconf import ATTR as TOOLCHAIN_ATTR
from pbuild.engine.toolchainconf import SECTION as TOOLCHAINS_SECTION
from pbuild.engine.toolchainconf import ToolchainDefault, read_defaults, rule_schema
from pbuild.engine.toolchains import needed_files
from pbuild.lib.errors import UserError
from pbuild.lib.gcpause import collector_paused

_TYPE_NAMES = {
    "string": "a string",
    "string_list": "a list of strings",
    "string_dict": "a table of strings",
    "int": "an integer",
    "bool": "true or false",
    "dict": "a table",
    "label": "a label or file name",
    "label_list": "a list of labels or file names",
    "output": "a file name",
    "output_list": "a list of file names",
}


@dataclass
class ConfiguredTarget:
    """An analyzed target: its providers and the actions it declared."""

    label: Label
    decl: TargetDecl
    rule: RuleDef
    providers: tuple[Provider, ...]
    actions: list[Action]
    deps: tuple[Label, ...]

    def as_target(self) -> Target:
        return Target(self.label, self.providers)


@dataclass
class ActionGraph:
    """All declared actions and who produces which file."""

    targets: dict[Label, ConfiguredTarget] = field(default_factory=dict)
    producers: dict[str, Action] = field(default_factory=dict)
    _parents: dict[str, str] = field(default_factory=dict)  # folder of an output -> that output

    def add(self, configured: ConfiguredTarget) -> None:
        for action in configured.actions:
            for output in action.outputs:
                self._check_nesting(output.path, action, configured)
                existing = self.producers.get(output.path)
                if existing is not None:
                    raise AnalysisError(
                        f"output {output.path} is declared by both {existing.owner} and {action.owner}",
                        location=configured.decl.location,
                        label=configured.label,
                        hint="give one of the outputs another name",
                    )
                self.producers[output.path] = action
        self.targets[configured.label] = configured

    def _check_nesting(self, path: str, action: Action, configured: ConfiguredTarget) -> None:
        """Refuse an output that is a folder of another output, or lies inside one."""
        parts = path.split("/")
        clash = None
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.producers and not self.producers[parent].outputs[0].is_directory:
                clash = parent
                break
        if clash is None and path in self._parents:
            clash = self._parents[path]
        if clash is not None:
            other = self.producers.get(clash) or self.producers.get(path)
            raise AnalysisError(
                f"output {path} and output {clash} of {other.owner if other else 'another target'} "
                "cannot both exist: one would be a folder of the other",
                location=configured.decl.location,
                label=configured.label,
                hint="rename one of the outputs",
            )
        for i in range(1, len(parts)):
            self._parents.setdefault("/".join(parts[:i]), path)

    def actions_for(self, files: Sequence[File]) -> list[Action]:
        """The actions needed to produce ``files``, dependencies first (a stable topological order)."""
        order: list[Action] = []
        seen: set[int] = set()
        stack: list[tuple[Action, bool]] = []
        for f in reversed(files):
            producer = self.producers.get(f.path)
            if producer is not None:
                stack.append((producer, False))
        while stack:
            action, expanded = stack.pop()
            ident = id(action)
            if expanded:
                if ident not in seen:
                    seen.add(ident)
                    order.append(action)
                continue
            if ident in seen:
                continue
            stack.append((action, True))
            for f in reversed(needed_files(action)):
                producer = self.producers.get(f.path)
                if producer is not None and id(producer) not in seen:
                    stack.append((producer, False))
        return order


def check_plain_attrs(schema: Mapping[str, Attr], decl: TargetDecl) -> dict[str, Any]:
    """Check non-label attributes (used by target generators, which run at load time)."""
    values: dict[str, Any] = {}
    problems = _unknown_and_missing(schema, decl)
    if problems:
        raise problems[0]
    for name, spec in schema.items():
        raw = decl.attrs.get(name, spec.default)
        values[name] = _check_type(name, spec, raw, decl) if name in decl.attrs else raw
    return values


def _unknown_and_missing(schema: Mapping[str, Attr], decl: TargetDecl) -> list[PbuildError]:
    problems: list[PbuildError] = []
    for name in decl.attrs:
        if name not in schema and name not in COMMON_ATTRS:
            near = difflib.get_close_matches(name, list(schema), n=1)
            problems.append(
                LoadError(
                    f"unknown attribute {name!r} for rule {decl.rule}",
                    location=decl.attr_locations.get(name, decl.location),
                    label=decl.label,
                    hint=(f"did you mean {near[0]!r}? " if near else "")
                    + f"{decl.rule} accepts: {', '.join(sorted(schema))}",
                )
            )
    for name, spec in schema.items():
        if spec.required and name not in decl.attrs:
            problems.append(
                LoadError(
                    f"missing required attribute {name!r} ({_TYPE_NAMES.get(spec.kind, spec.kind)}: {spec.doc})",
                    location=decl.location,
                    label=decl.label,
                    hint=f"add {name} = ... to [{decl.label.name}]",
                )
            )
    return problems


def _check_type(name: str, spec: Attr, raw: Any, decl: TargetDecl) -> Any:
    def bad() -> LoadError:
        return LoadError(
            f"attribute {name!r} must be {_TYPE_NAMES.get(spec.kind, spec.kind)}, got {type(raw).__name__} {raw!r}",
            location=decl.attr_locations.get(name, decl.location),
            label=decl.label,
            hint=spec.doc,
        )

    kind = spec.kind
    if kind in ("string", "output"):
        if not isinstance(raw, str):
            raise bad()
        if spec.values and raw not in spec.values:
            raise LoadError(
                f"attribute {name!r} must be one of {', '.join(map(repr, spec.values))}, got {raw!r}",
                location=decl.attr_locations.get(name, decl.location),
                label=decl.label,
            )
        return raw
    if kind in ("string_list", "output_list"):
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise bad()
        return tuple(raw)
    if kind == "string_dict":
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise bad()
        return dict(raw)
    if kind == "int":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise bad()
        return raw
    if kind == "bool":
        if not isinstance(raw, bool):
            raise bad()
        return raw
    if kind == "dict":
        if not isinstance(raw, dict):
            raise bad()
        return raw
    if kind == "label":
        if not isinstance(raw, str):
            raise bad()
        return raw
    if kind == "label_list":
        if isinstance(raw, dict) and spec.allow_files:
            return raw  # a glob table, expanded by the analyzer
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise bad()
        return tuple(raw)
    raise AssertionError(kind)


class Analyzer:
    """Analyzes targets on demand (depth-first, memoized), reporting cycles with their path."""

    def __init__(self, loader: Loader, config: Mapping[str, Any]) -> None:
        self.loader = loader
        self.config = config
        self.graph = ActionGraph()
        self._in_progress: list[Label] = []
        self._attr_outputs: dict[str, dict[str, list[TargetDecl]]] = {}
        self._toolchain_defaults: dict[str, ToolchainDefault] | None = None

    def analyze(self, labels: Sequence[Label]) -> ActionGraph:
        with collector_paused():  # the graph is large and long-lived: see pbuild.lib.gcpause
            for label in labels:
                self._analyze(label, None, None)
        return self.graph

    def _analyze(self, label: Label, parent: TargetDecl | None, attr_name: str | None) -> ConfiguredTarget:
        done = self.graph.targets.get(label)
        if done is not None:
            return done
        decl = self.loader.target(label, referenced_from=parent, attr_name=attr_name)
        if label in self._in_progress:
            cycle = self._in_progress[self._in_progress.index(label):] + [label]
            raise AnalysisError(
                "dependency cycle: " + " -> ".join(str(x) for x in cycle),
                location=decl.location,
                label=label,
                hint="break the cycle by removing one of these dependencies",
            )
        self._in_progress.append(label)
        try:
            configured = self._configure(decl)
        finally:
            self._in_progress.pop()
        self.graph.add(configured)
        return configured

    def _package_outputs(self, package: str) -> dict[str, list[TargetDecl]]:
        """Outputs named in attributes (genrule outs) of a package's targets, by name."""
        known = self._attr_outputs.get(package)
        if known is not None:
            return known
        known = {}
        loaded = self.loader.package(package)
        for decl in loaded.targets.values() if loaded else ():
            definition = self.loader.ruleset.lookup(decl.rule)
            if not isinstance(definition, RuleDef):
                continue
            for name, spec in definition.attrs.items():
                if spec.kind in ("output", "output_list") and name in decl.attrs:
                    raw = decl.attrs[name]
                    for out in [raw] if isinstance(raw, str) else (raw if isinstance(raw, list) else []):
                        known.setdefault(str(out), []).append(decl)
        self._attr_outputs[package] = known
        return known

    def _check_unique_outputs(self, decl: TargetDecl, definition: RuleDef) -> None:
        """A target's attribute outputs must be unique in its package, even when only this target
        of the clashing ones is built (else building them one by one would overwrite)."""
        outputs = self._package_outputs(decl.label.package)
        for name, spec in definition.attrs.items():
            if spec.kind not in ("output", "output_list") or name not in decl.attrs:
                continue
            raw = decl.attrs[name]
            for out in [raw] if isinstance(raw, str) else (raw if isinstance(raw, list) else []):
                owners = outputs.get(str(out), [])
                if len(owners) > 1:
                    package = decl.label.package
                    path = f"{OUT_DIR}/{package}/{out}" if package else f"{OUT_DIR}/{out}"
                    raise AnalysisError(
                        f"output {path} is declared by both {owners[0].label} and {owners[1].label}",
                        location=decl.attr_locations.get(name, decl.location),
                        label=decl.label,
                        hint="give one of the outputs another name",
                    )

    def _configure(self, decl: TargetDecl) -> ConfiguredTarget:
        definition = self.loader.ruleset.lookup(decl.rule)
        if not isinstance(definition, RuleDef):
            raise LoadError(f"{decl.rule} is a target generator, not a rule", label=decl.label)
        self._check_unique_outputs(decl, definition)
        problems = _unknown_and_missing(rule_schema(definition), decl)
        if problems:
            if len(problems) > 1:
                raise LoadError(
                    f"{len(problems)} problems:\n" + "\n".join("  " + p.render() for p in problems),
                    label=decl.label,
                )
            raise problems[0]
        package = decl.label.package
        values: dict[str, Any] = {}
        files: dict[str, tuple[File, ...]] = {}
        deps: list[Label] = []
        toolchain = self._toolchain_of(decl, definition, deps) if definition.toolchain else None
        for name, spec in definition.attrs.items():
            raw = decl.attrs.get(name, spec.default)
            if name in decl.attrs:
                raw = _check_type(name, spec, raw, decl)
            if spec.kind in ("label", "label_list"):
                items = self._label_items(name, spec, raw, decl)
                targets: list[Target] = []
                flat: list[File] = []
                for item in items:
                    if isinstance(item, File):
                        flat.append(item)
                        name_in_package = item.path[len(package) + 1:] if package else item.path
                        targets.append(Target(Label(package, name_in_package), (DefaultInfo(files=(item,)),)))
                        continue
                    dep = self._analyze(item, decl, name)
                    deps.append(item)
                    self._check_providers(name, spec, dep, decl)
                    target = dep.as_target()
                    targets.append(target)
                    dep_files = target.files
                    if spec.allow_files not in (False, True):
                        self._check_extensions(name, spec, dep_files, decl)
                    flat.extend(dep_files)
                files[name] = tuple(flat)
                if spec.kind == "label":
                    values[name] = targets[0] if targets else None
                else:
                    values[name] = tuple(targets)
            elif spec.kind == "dict" and any(f.is_label for _, f in spec.fields):
                values[name], files[name] = self._table_labels(name, spec, raw, decl, deps)
            elif spec.kind in ("output", "output_list"):
                names = [raw] if spec.kind == "output" and raw else list(raw or ())
                outs = []
                for out_name in names:
                    if not out_name or out_name.startswith("/") or ".." in out_name.split("/"):
                        raise LoadError(
                            f"attribute {name!r}: output {out_name!r} must be a relative path without '..'",
                            location=decl.attr_locations.get(name, decl.location),
                            label=decl.label,
                        )
                    prefix = f"{OUT_DIR}/{package}/" if package else f"{OUT_DIR}/"
                    outs.append(File(prefix + out_name, is_source=False))
                values[name] = outs[0] if spec.kind == "output" and outs else (tuple(outs) if spec.kind == "output_list" else None)
            else:
                values[name] = raw
        ctx = RuleContext(
            label=decl.label,
            rule=definition,
            attr_values=values,
            files=files,
            workspace_config=self.config,
            attr_locations=decl.attr_locations,
            target_location=decl.location,
            workspace_root=self.loader.workspace.root,
            on_read=self.loader.recorder.file,
            toolchain=toolchain,
        )
        try:
            providers = tuple(definition.implementation(ctx))
        except PbuildError as exc:
            if exc.label is None:
                exc.label = decl.label
            if exc.location is None:
                exc.location = decl.location
            raise
        except UserError as exc:  # a shared library's error: said with the target it struck
            raise PbuildError.of(exc, label=decl.label, location=decl.location) from None
        if not any(isinstance(p, DefaultInfo) for p in providers):
            providers = (DefaultInfo(),) + providers
        return ConfiguredTarget(decl.label, decl, definition, providers, ctx.actions.declared, tuple(deps))

    def _table_labels(self, name: str, spec: Attr, raw: Any, decl: TargetDecl,
                      deps: list[Label]) -> tuple[dict[str, Any], tuple[File, ...]]:
        """A table of tables (``attr.dict(fields=...)``) with its entries' label fields analyzed
        and replaced by :class:`Target` objects; the files of those targets, flattened."""
        label_fields = [(field_name, f) for field_name, f in spec.fields if f.kind == "label"]
        table: dict[str, Any] = {}
        flat: list[File] = []
        for entry_name, entry in (raw or {}).items():
            if not isinstance(entry, dict):
                raise LoadError(
                    f"attribute {name!r}: {entry_name!r} must be a table, got {type(entry).__name__} {entry!r}",
                    location=nearest_location(decl.attr_locations, f"{name}.{entry_name}", decl.location),
                    label=decl.label,
                    hint=f"write [{decl.label.name}.{name}.{entry_name}] with its keys: "
                         + ", ".join(field_name for field_name, _ in spec.fields),
                )
            entry = dict(entry)  # decl.attrs stays as written
            for field_name, field_spec in label_fields:
                if field_name not in entry:
                    continue
                dotted = f"{name}.{entry_name}.{field_name}"
                where = nearest_location(decl.attr_locations, dotted, decl.location)
                text = entry[field_name]
                if not isinstance(text, str) or not text.startswith((":", "//")):
                    raise LoadError(
                        f"attribute {dotted!r} must be a label (:target or //package:target), got {text!r}",
                        location=where, label=decl.label, hint=field_spec.doc,
                    )
                try:
                    dep_label = Label.parse(text, current_package=decl.label.package)
                except LoadError as exc:
                    exc.location, exc.label = where, decl.label
                    raise
                located = dotted if dotted in decl.attr_locations else name
                dep = self._analyze(dep_label, decl, located)
                deps.append(dep_label)
                for kind in field_spec.providers:
                    if not any(isinstance(p, kind) for p in dep.providers):
                        raise AnalysisError(
                            f"attribute {dotted!r}: {dep.label} (a {dep.rule.name}) does not provide {kind.__name__}",
                            location=where,
                            label=decl.label,
                            hint=f"{field_name} needs targets of a rule that provides {kind.__name__}",
                        )
                target = dep.as_target()
                entry[field_name] = target
                flat.extend(target.files)
            table[entry_name] = entry
        return table, tuple(flat)

    def _toolchain_of(self, decl: TargetDecl, definition: RuleDef, deps: list[Label]) -> Toolchain | None:
        """The toolchain ``decl`` runs on (analyzed first, as an implicit dependency); None: the host."""
        where: Location
        if TOOLCHAIN_ATTR in decl.attrs:
            raw = _check_type(TOOLCHAIN_ATTR, rule_schema(definition)[TOOLCHAIN_ATTR], decl.attrs[TOOLCHAIN_ATTR], decl)
            where = decl.attr_locations.get(TOOLCHAIN_ATTR, decl.location)
            if raw == HOST_TOOLCHAIN:
                return None
            try:
                label = Label.parse(raw, current_package=decl.label.package)
            except LoadError as exc:
                exc.location, exc.label = where, decl.label
                raise
            written = f"toolchain = {raw!r}"
        else:
            default = self._defaults().get(definition.toolchain)
            if default is None or default.label is None:
                return None
            label, where = default.label, default.location
            written = f"[toolchains] {definition.toolchain} (the default of {definition.name})"
        try:
            dep = self._analyze(label, decl, TOOLCHAIN_ATTR)
        except LoadError as exc:
            if TOOLCHAIN_ATTR not in decl.attrs and exc.label == decl.label:
                exc.location = where  # a missing default names the line of WORKSPACE.toml
            raise
        info = next((p for p in dep.providers if isinstance(p, ToolchainInfo)), None)
        if info is None:
            raise AnalysisError(
                f"{written}: {label} (a {dep.rule.name}) is not a toolchain",
                location=where,
                label=decl.label,
                hint='a toolchain is a deb_packages or image target; or write toolchain = "host" '
                     "to run on the host's root (not hermetic)",
            )
        deps.append(label)
        return info.toolchain

    def _defaults(self) -> dict[str, ToolchainDefault]:
        if self._toolchain_defaults is None and TOOLCHAINS_SECTION not in self.config:
            self._toolchain_defaults = {}  # and no rule family is imported just to list the kinds
        if self._toolchain_defaults is None:
            kinds = {d.toolchain for d in self.loader.ruleset.all().values()
                     if isinstance(d, RuleDef) and d.toolchain}
            self._toolchain_defaults = read_defaults(self.config, self.loader.workspace.root, kinds)
        return self._toolchain_defaults

    def _label_items(self, name: str, spec: Attr, raw: Any, decl: TargetDecl) -> list[Label | File]:
        package = decl.label.package
        if raw is None:
            return []
        if isinstance(raw, dict):
            include = raw.get("glob")
            exclude = raw.get("exclude", [])
            allow_empty = raw.get("allow_empty", False)
            where = decl.attr_locations.get(name, decl.location)
            if set(raw) - {"glob", "exclude", "allow_empty"} or not _strings(include) or not _strings(exclude) \
                    or not isinstance(allow_empty, bool):
                raise LoadError(
                    f"attribute {name!r}: a file table must be {{ glob = [...], exclude = [...] }}"
                    " (and optionally allow_empty = true)",
                    location=where,
                    label=decl.label,
                )
            try:
                matched = self.loader.glob(package, include, exclude, allow_empty=allow_empty)
            except LoadError as exc:
                exc.location, exc.label = where, decl.label
                raise
            return [File(f"{package}/{m}" if package else m) for m in matched]
        entries = [raw] if isinstance(raw, str) else list(raw)
        items: list[Label | File] = []
        for entry in entries:
            where = decl.attr_locations.get(name, decl.location)
            if entry.startswith((":", "//")):
                try:
                    items.append(Label.parse(entry, current_package=package))
                except LoadError as exc:
                    exc.location, exc.label = where, decl.label
                    raise
                continue
            if not spec.allow_files:
                raise LoadError(
                    f"attribute {name!r} takes labels, got {entry!r}",
                    location=where,
                    label=decl.label,
                    hint=f"write ':{entry}' for a target of this package",
                )
            path = f"{package}/{entry}" if package else entry
            if entry.startswith("/") or ".." in entry.split("/"):
                raise LoadError(f"attribute {name!r}: {entry!r} must be a path inside the package",
                                location=where, label=decl.label)
            full = self.loader.workspace.path(path)
            self.loader.recorder.existence(full)  # a file appearing here changes what the name means
            if os.path.isdir(full):
                raise LoadError(
                    f"attribute {name!r}: {entry!r} is a folder, not a file",
                    location=where,
                    label=decl.label,
                    hint=f'list its files with a glob: {name} = {{ glob = ["{entry}/**"] }}',
                )
            if not os.path.isfile(full):
                # A file name that matches a target of the package means that target.
                pkg = self.loader.package(package)
                if pkg is not None and entry in pkg.targets:
                    items.append(Label(package, entry))
                    continue
                raise LoadError(
                    f"attribute {name!r}: file {entry!r} does not exist in //{package}",
                    location=where,
                    label=decl.label,
                    hint=f"create {path} or fix the name",
                )
            if spec.allow_files is not True:
                self._check_extensions(name, spec, (File(path),), decl)
            items.append(File(path))
        return items

    def _check_extensions(self, name: str, spec: Attr, files: Sequence[File], decl: TargetDecl) -> None:
        allowed = spec.allow_files
        if isinstance(allowed, tuple):
            for f in files:
                if not any(f.basename.endswith("." + ext.lstrip(".")) for ext in allowed):
                    raise LoadError(
                        f"attribute {name!r}: {f.path} is not one of the allowed file types ({', '.join(allowed)})",
                        location=decl.attr_locations.get(name, decl.location),
                        label=decl.label,
                    )

    def _check_providers(self, name: str, spec: Attr, dep: ConfiguredTarget, decl: TargetDecl) -> None:
        for kind in spec.providers:
            if not any(isinstance(p, kind) for p in dep.providers):
                raise AnalysisError(
                    f"attribute {name!r}: {dep.label} (a {dep.rule.name}) does not provide {kind.__name__}",
                    location=decl.attr_locations.get(name, decl.location),
                    label=decl.label,
                    hint=f"{name} needs targets of a rule that provides {kind.__name__}",
                )


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
