"""Which rule names exist: the built-in families and the workspace's plugins; and which
commands the built-in families add to ``pbuild``.

Families are imported lazily: a workspace of genrules never pays for importing the image
rules. Each family module lists its rules in a module-level ``RULES`` and its commands, if any,
in ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from pbuild.engine.api import Command, GeneratorDef, RuleDef
from pbuild.engine.errors import Location, WorkspaceError
from pbuild.engine.workspace import WORKSPACE_FILE, Workspace

# Cheapest first: most lookups stop at core.
BUILTIN_FAMILIES = (
    "pbuild.rules.core",
    "pbuild.rules.python",
    "pbuild.rules.debian",
    "pbuild.rules.oci",
    "pbuild.rules.stack",
)

Definition = RuleDef | GeneratorDef


def family_commands() -> list[Command]:
    """The commands of the built-in families (their ``COMMANDS``), in family order.

    The CLI asks only when the command line is not one of the engine's own commands, so a
    build never imports a family's command code.
    """
    commands: list[Command] = []
    for module_name in BUILTIN_FAMILIES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # a family that is not part of this installation
            raise
        for command in getattr(module, "COMMANDS", ()):
            if not isinstance(command, Command):
                raise WorkspaceError(f"{module_name}: COMMANDS holds {command!r}, not a command")
            commands.append(command)
    return commands


class RuleSet:
    """Maps rule names to definitions, importing rule families on first need."""

    def __init__(self, workspace: Workspace | None = None) -> None:
        self._rules: dict[str, Definition] = {}
        self._pending = list(BUILTIN_FAMILIES)
        self._workspace = workspace
        # Each plugin's RULES and where they come from, once imported; added after the
        # built-in families, so a clash is always blamed on the plugin.
        self._plugins: list[tuple[object, str]] | None = None if workspace is not None else []
        self._plugins_added = workspace is None

    def lookup(self, name: str) -> Definition | None:
        while name not in self._rules and (self._pending or not self._plugins_added):
            if self._pending:
                self._import_family(self._pending.pop(0))
            else:
                self._add_plugins()
        return self._rules.get(name)

    def names(self) -> list[str]:
        self.lookup("\0")  # forces every family and plugin in
        return sorted(self._rules)

    def all(self) -> dict[str, Definition]:
        self.names()
        return dict(self._rules)

    def _import_family(self, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return  # a family that is not part of this installation
            raise
        self._add(getattr(module, "RULES", ()), module_name)

    def load_plugins(self) -> None:
        """Import the workspace's plugins now (once): what they define is then importable by
        its module name, as unpickling a saved analysis needs."""
        if self._plugins is not None:
            return
        assert self._workspace is not None
        self._plugins = []
        for rel in self._workspace.plugins:
            path = self._workspace.path(rel)
            if not os.path.isfile(path):
                raise WorkspaceError(
                    f"plugin {rel} does not exist",
                    location=Location(WORKSPACE_FILE),
                    hint="workspace.plugins lists rule modules relative to the workspace root",
                )
            module_name = "pbuild_plugin_" + rel.replace("/", "_").replace(".", "_").replace("-", "_")
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a user's plugin failing to import is a user error
                raise WorkspaceError(
                    f"plugin {rel} failed to load: {type(exc).__name__}: {exc}",
                    location=Location(rel),
                    hint="fix the plugin module; it must define RULES = [...]",
                ) from None
            if not hasattr(module, "RULES"):
                raise WorkspaceError(
                    f"plugin {rel} defines no RULES list",
                    location=Location(rel),
                    hint="end the module with RULES = [my_rule, ...]",
                )
            self._plugins.append((module.RULES, rel))

    def _add_plugins(self) -> None:
        self.load_plugins()
        assert self._plugins is not None
        self._plugins_added = True
        for rules, rel in self._plugins:
            self._add(rules, rel)

    def _add(self, rules: object, origin: str) -> None:
        for definition in rules:  # type: ignore[attr-defined]
            if not isinstance(definition, RuleDef | GeneratorDef):
                raise WorkspaceError(f"{origin}: RULES holds {definition!r}, not a rule")
            if definition.name in self._rules:
                raise WorkspaceError(
                    f"{origin}: rule {definition.name!r} is already defined",
                    hint="give the plugin's rule another name",
                )
            self._rules[definition.name] = definition
