"""Which toolchain a target runs on: the ``toolchain`` attribute and ``[toolchains]`` of WORKSPACE.toml.

A rule declared with ``rule(..., toolchain=KIND)`` gets a ``toolchain`` attribute (a label, or
``"host"``). Left unset, it is ``[toolchains] KIND`` of WORKSPACE.toml; with no such entry the
target runs on the host's root, as before toolchains existed (not hermetic: the action's key holds
the host fingerprint instead of the toolchain's digest).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pbuild.engine.api import HOST_TOOLCHAIN, Attr, RuleDef
from pbuild.engine.errors import LoadError, Location, WorkspaceError
from pbuild.engine.labels import Label
from pbuild.engine.workspace import WORKSPACE_FILE
from pbuild.lib.tomlpos import table_positions

SECTION = "toolchains"
ATTR = "toolchain"


def toolchain_attr(kind: str) -> Attr:
    """The ``toolchain`` attribute of a rule of toolchain kind ``kind``."""
    return Attr(
        "label",
        f"The root filesystem the target's actions run on: a `deb_packages` or `image` target, or "
        f'"{HOST_TOOLCHAIN}" for the host\'s own root (not hermetic: the results depend on the host). '
        f"Default: `{kind}` of `[{SECTION}]` in WORKSPACE.toml, else \"{HOST_TOOLCHAIN}\".",
        default=None,
    )


def rule_schema(definition: RuleDef) -> Mapping[str, Attr]:
    """A rule's attributes as users write them: its own, plus ``toolchain`` for rules with a kind."""
    if not definition.toolchain:
        return definition.attrs
    return {**definition.attrs, ATTR: toolchain_attr(definition.toolchain)}


@dataclass(frozen=True)
class ToolchainDefault:
    """One entry of ``[toolchains]``: the label (None for ``"host"``) and where it was written."""

    label: Label | None
    location: Location


def read_defaults(config: Mapping[str, Any], workspace_root: str,
                  kinds: Iterable[str]) -> dict[str, ToolchainDefault]:
    """Check ``[toolchains]`` (every key a known kind, every value a label or "host") and return it.

    All problems are reported at once, each with its line of WORKSPACE.toml.
    """
    section = config.get(SECTION)
    if section is None:
        return {}
    lines = _key_lines(workspace_root)
    if not isinstance(section, dict):
        raise WorkspaceError(f"[{SECTION}] must be a table of kind = label",
                             location=Location(WORKSPACE_FILE, lines.get("", None)),
                             hint=f'[{SECTION}]\npython = "//third_party/debian:python3"')
    known = sorted(set(kinds))
    problems: list[tuple[Location, str]] = []
    defaults: dict[str, ToolchainDefault] = {}
    for key, value in section.items():
        where = Location(WORKSPACE_FILE, lines.get(key, lines.get("")))
        if key not in known:
            problems.append((where, f"unknown toolchain kind {key!r} in [{SECTION}] "
                                    f"(rules use: {', '.join(known) or 'none'})"))
            continue
        if not isinstance(value, str):
            problems.append((where, f"[{SECTION}] {key} must be a label string or \"{HOST_TOOLCHAIN}\", "
                                    f"got {type(value).__name__} {value!r}"))
            continue
        if value == HOST_TOOLCHAIN:
            defaults[key] = ToolchainDefault(None, where)
            continue
        try:
            label = Label.parse(value, current_package="")
        except LoadError as exc:
            problems.append((where, f"[{SECTION}] {key}: {exc.message}"))
            continue
        defaults[key] = ToolchainDefault(label, where)
    if problems:
        if len(problems) == 1:
            raise WorkspaceError(problems[0][1], location=problems[0][0], hint=_HINT)
        raise WorkspaceError(f"{len(problems)} problems in [{SECTION}]:\n"
                             + "\n".join(f"  {where}: {text}" for where, text in problems), hint=_HINT)
    return defaults


_HINT = (f'each entry of [{SECTION}] names a kind and a deb_packages or image target, e.g. '
         f'python = "//third_party/debian:python3", or "{HOST_TOOLCHAIN}"')


def _key_lines(workspace_root: str) -> dict[str, int]:
    """Line of each key of ``[toolchains]`` ("" for the header itself)."""
    try:
        with open(os.path.join(workspace_root, WORKSPACE_FILE), encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return {}
    tables, keys = table_positions(text)
    found = {name: line for (table, name), line in keys.items() if table == SECTION}
    if SECTION in tables:
        found[""] = tables[SECTION]
    return found
