"""Finding the workspace and reading ``WORKSPACE.toml``."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

from pbuild.engine.errors import Location, WorkspaceError
from pbuild.lib.tomlpos import load_toml, toml_error_location, toml_error_message

WORKSPACE_FILE = "WORKSPACE.toml"
BUILD_FILE = "BUILD.toml"
IGNORE_FILE = ".pbuildignore"
# Folders that are never packages nor glob results, whatever .pbuildignore says.
ALWAYS_IGNORED = ("pbuild-out", ".venv", ".git", "__pycache__")
# Packages pbuild itself ships, as Bazel ships @bazel_tools: ``//@pbuild/python:pytest`` is read
# from ``rules/builtin/python/BUILD.toml`` of the running pbuild, not from the workspace. They
# hold tool targets made from locks, never source files (those are read from the workspace).
BUILTIN_PACKAGE_PREFIX = "@pbuild"


def is_builtin_package(package: str) -> bool:
    """Whether ``package`` is one of pbuild's built-in packages (``@pbuild/...``)."""
    return package == BUILTIN_PACKAGE_PREFIX or package.startswith(BUILTIN_PACKAGE_PREFIX + "/")


def builtin_root() -> str:
    """The folder of pbuild's built-in packages in this installation."""
    import pbuild.rules  # located, not used: the built-in packages sit beside the rules

    return os.path.join(os.path.dirname(os.path.abspath(pbuild.rules.__file__)), "builtin")


def package_dir(workspace_root: str, package: str) -> str:
    """The folder of ``package``: below the workspace, or below :func:`builtin_root`."""
    if is_builtin_package(package):
        rest = package[len(BUILTIN_PACKAGE_PREFIX):].lstrip("/")
        return os.path.join(builtin_root(), rest) if rest else builtin_root()
    return os.path.join(workspace_root, package) if package else workspace_root


class Workspace:
    """A workspace root and its parsed ``WORKSPACE.toml`` (a plain class: see errors.Location)."""

    def __init__(self, root: str, config: Mapping[str, Any] | None = None) -> None:
        self.root = root
        self.config: Mapping[str, Any] = config or {}

    @property
    def name(self) -> str:
        section = self.config.get("workspace", {})
        return str(section.get("name", os.path.basename(self.root)))

    @property
    def plugins(self) -> tuple[str, ...]:
        section = self.config.get("workspace", {})
        return tuple(section.get("plugins", ()))

    def path(self, relative: str) -> str:
        return os.path.join(self.root, relative) if relative else self.root

    def package_dir(self, package: str) -> str:
        """The folder of ``package`` (a built-in ``@pbuild/...`` package is not in the workspace)."""
        return package_dir(self.root, package)


def find_workspace(start: str, explicit: str | None = None) -> Workspace:
    """The workspace at ``explicit``, else the nearest folder upward from ``start`` with WORKSPACE.toml."""
    if explicit is not None:
        root = os.path.abspath(explicit)
        if not os.path.isfile(os.path.join(root, WORKSPACE_FILE)):
            raise WorkspaceError(
                f"--workspace {explicit}: no {WORKSPACE_FILE} there",
                hint=f"create {os.path.join(explicit, WORKSPACE_FILE)} (it may be empty) or point at the right folder",
            )
        return Workspace(root, read_workspace_config(root))
    current = os.path.abspath(start)
    while True:
        if os.path.isfile(os.path.join(current, WORKSPACE_FILE)):
            return Workspace(current, read_workspace_config(current))
        parent = os.path.dirname(current)
        if parent == current:
            raise WorkspaceError(
                f"no {WORKSPACE_FILE} found in {os.path.abspath(start)} or any folder above it",
                hint=f"run pbuild inside a workspace, pass --workspace DIR, or create {WORKSPACE_FILE} at the root",
            )
        current = parent


def read_workspace_config(root: str) -> Mapping[str, Any]:
    path = os.path.join(root, WORKSPACE_FILE)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        config = load_toml(data)
    except tomllib.TOMLDecodeError as exc:
        message, hint = toml_error_message(exc, "fix the syntax; see https://toml.io for the format")
        raise WorkspaceError(message, location=toml_error_location(WORKSPACE_FILE, exc), hint=hint) from None
    section = config.get("workspace", {})
    if not isinstance(section, dict):
        raise WorkspaceError("[workspace] must be a table", location=Location(WORKSPACE_FILE))
    plugins = section.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise WorkspaceError(
            "workspace.plugins must be a list of paths to rule modules",
            location=Location(WORKSPACE_FILE),
            hint='plugins = ["build_rules/stamp.py"]',
        )
    return config


def default_cache_dir() -> str:
    """``$PBUILD_CACHE``, else ``$XDG_CACHE_HOME/pbuild``, else ``~/.cache/pbuild``."""
    if os.environ.get("PBUILD_CACHE"):
        return os.path.abspath(os.environ["PBUILD_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "pbuild")


def user_config_path() -> str:
    """The user's config file: ``$XDG_CONFIG_HOME/pbuild/config.toml``, else ``~/.config/...``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pbuild", "config.toml")


def current_package(workspace: Workspace, cwd: str) -> str:
    """The package the user stands in ('' at the root or outside), for relative labels."""
    rel = os.path.relpath(os.path.abspath(cwd), workspace.root)
    return "" if rel == "." or rel.startswith("..") else rel.replace(os.sep, "/")
