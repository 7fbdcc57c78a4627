"""Built-in Python tools (pytest): locked by pbuild itself, as Pants locks the tools it runs.

A ``py_test`` needs pytest, but pytest is pbuild's tool, not the user's dependency: it comes from
``//@pbuild/python:pytest``, a ``py_tool`` target in pbuild's built-in package
(``rules/builtin/python``). That package ships the tool's requirements (``pytest.in``) and one
lock per interpreter (``pytest-cp311.lock``, ...), in the format of ``requirements.lock``: name,
version, wheel file name and sha256, no host. The wheels are fetched through the user's pip
configuration and checked against the lock like any locked wheel.

A workspace overrides a tool with its own lock (and, optionally, its own requirements)::

    [python.tools.pytest]
    lock = "third_party/python/pytest.lock"
    requirements = "third_party/python/pytest.in"   # default: pbuild's pytest.in

``./pbuild lock --tools`` resolves each tool for the workspace's ``[python]`` target and writes
the workspace's override lock, or, without an override, pbuild's built-in lock for that target
(how pbuild's maintainers refresh the shipped locks).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbuild.engine.api import (
    BUILTIN_PACKAGE_PREFIX,
    DefaultInfo,
    Provider,
    RuleContext,
    attr,
    package_dir,
    rule,
)
from pbuild.engine.errors import Location, WorkspaceError
from pbuild.rules.python.config import PythonTarget
from pbuild.rules.python.lockfile import Lock, PythonLockError, inputs_digest, parse_lock
from pbuild.rules.python.providers import PyInfo
from pbuild.rules.python.requirements import declare_locked_wheel

# The tools pbuild ships a lock for; each has ``<tool>.in`` in the built-in package.
TOOLS = ("pytest",)
BUILTIN_PACKAGE = f"{BUILTIN_PACKAGE_PREFIX}/python"
RELOCK_TOOLS = "./pbuild lock --tools"
_TOOL_KEYS = ("lock", "requirements")


@dataclass(frozen=True)
class ToolLockSource:
    """Where a tool's lock and requirements come from: workspace paths, or '' for pbuild's own."""

    tool: str
    lock: str = ""
    requirements: str = ""


def builtin_lock_name(tool: str, target: PythonTarget) -> str:
    """The built-in lock of ``tool`` for ``target``'s interpreter: ``pytest-cp311.lock``."""
    return f"{tool}-{target.interpreter_tag}.lock"


def read_tool_source(python_table: Mapping[str, Any], tool: str, *,
                     where: str = "WORKSPACE.toml") -> ToolLockSource:
    """The ``[python.tools.<tool>]`` override of a parsed ``[python]`` table, checked."""
    tools = python_table.get("tools", {})
    if not isinstance(tools, Mapping):
        raise WorkspaceError("[python] tools must be a table of [python.tools.<tool>] tables",
                             location=Location(where), hint=f"known tools: {', '.join(TOOLS)}")
    problems = [f"unknown tool {name!r} (known: {', '.join(TOOLS)})" for name in tools if name not in TOOLS]
    table = tools.get(tool, {})
    if not isinstance(table, Mapping):
        problems.append(f"[python.tools.{tool}] must be a table")
        table = {}
    problems += [f"[python.tools.{tool}]: unknown key {key!r} (known: {', '.join(_TOOL_KEYS)})"
                 for key in table if key not in _TOOL_KEYS]
    for key in _TOOL_KEYS:
        value = table.get(key, "")
        if not isinstance(value, str) or (key in table and not value):
            problems.append(f"[python.tools.{tool}] {key} must be a workspace-relative path, not {value!r}")
        elif value.startswith("/") or ".." in value.split("/"):
            problems.append(f"[python.tools.{tool}] {key} = {value!r} must be a path inside the workspace")
    if table and "lock" not in table:
        problems.append(f"[python.tools.{tool}] needs lock = \"...\" (its requirements alone pin nothing)")
    if problems:
        raise WorkspaceError(
            "bad [python.tools] table: " + "; ".join(problems), location=Location(where),
            hint=f'override a tool with [python.tools.{tool}] lock = "third_party/python/{tool}.lock", '
                 f"then run {RELOCK_TOOLS}",
        )
    return ToolLockSource(tool, str(table.get("lock", "")), str(table.get("requirements", "")))


def lock_fits(lock: Lock, target: PythonTarget) -> bool:
    """Whether ``lock`` serves ``target``: made for it, or pure-Python wheels for its interpreter.

    A lock of ``py3-none-any`` wheels resolved for cp311 is the same on every platform and ABI of
    cp311, so one built-in lock per interpreter serves x86_64 and aarch64 workspaces alike.
    """
    if lock.target == target.describe():
        return True
    pure = all(project.filename.endswith("-none-any.whl") for project in lock.projects)
    return pure and lock.target.split(" ", 1)[0] == target.interpreter_tag


@rule(
    "py_tool",
    attrs={
        "tool": attr.string(f"The tool to lock and install: one of {', '.join(TOOLS)}.", required=True),
    },
    toolchain="python",
    doc="A Python tool pbuild runs (pytest for py_test), from its tool lock: the workspace's "
        "`[python.tools.<tool>] lock` if WORKSPACE.toml sets one, else the lock pbuild ships for the "
        "workspace's interpreter. Its wheels are fetched and verified like any locked wheel. "
        "Normally only used as `//@pbuild/python:pytest`.",
)
def py_tool(ctx: RuleContext) -> Sequence[Provider]:
    tool = ctx.attr.tool
    if tool not in TOOLS:
        ctx.fail(f"unknown tool {tool!r}", attr="tool", hint=f"known tools: {', '.join(TOOLS)}")
    python = ctx.config("python")
    target = PythonTarget.from_config(python)
    source = read_tool_source(python, tool)
    lock = _load_tool_lock(ctx, source, target)
    wheels = [declare_locked_wheel(ctx, project, target, folder=f"{ctx.label.name}/", relock=RELOCK_TOOLS)
              for project in lock.projects]
    return [
        PyInfo(sources=(), wheels=tuple(sorted(wheels))),
        DefaultInfo(files=tuple(w.file for w in wheels), runfiles=tuple(w.site for w in wheels if w.site)),
    ]


def _load_tool_lock(ctx: RuleContext, source: ToolLockSource, target: PythonTarget) -> Lock:
    """Read and check the tool's lock; every failure says which file and how to re-lock."""
    tool = source.tool
    override = f'[python.tools.{tool}] lock = "third_party/python/{tool}.lock"'
    if source.lock:
        lock_path = source.lock
        text = ctx.read_workspace_file(source.lock)
        if text is None:
            ctx.fail(f"the {tool} lock {source.lock} named by WORKSPACE.toml [python.tools.{tool}] does not exist",
                     hint=f"write it with {RELOCK_TOOLS}")
    else:
        name = builtin_lock_name(tool, target)
        lock_path = f"{ctx.package}/{name} (built into pbuild)"
        text = ctx.read_package_file(name)
        if text is None:
            ctx.fail(f"pbuild has no built-in {tool} lock for {target.interpreter_tag} ({name}), the interpreter "
                     "WORKSPACE.toml [python] targets",
                     hint=f"lock {tool} for this workspace: add {override} to WORKSPACE.toml, then run {RELOCK_TOOLS}")
    if source.requirements:
        requirements = ctx.read_workspace_file(source.requirements)
        requirements_path = source.requirements
    else:
        requirements = ctx.read_package_file(f"{tool}.in")
        requirements_path = f"pbuild's {tool}.in"
    if requirements is None:
        ctx.fail(f"the {tool} requirements {requirements_path} do not exist",
                 hint=f"list the tool's requirements there (e.g. {tool}), then run {RELOCK_TOOLS}")
    try:
        lock = parse_lock(text, path=lock_path, relock=RELOCK_TOOLS)
    except PythonLockError as exc:
        ctx.fail(f"{lock_path}: {exc.message}", hint=f"regenerate it with {RELOCK_TOOLS}")
    if lock.inputs_sha256 != inputs_digest(requirements):
        ctx.fail(f"the {tool} lock {lock_path} is out of date with {requirements_path} (its recorded hash differs)",
                 hint=f"run {RELOCK_TOOLS}")
    if not lock_fits(lock, target):
        ctx.fail(f"the {tool} lock {lock_path} was made for {lock.target} but WORKSPACE.toml [python] targets "
                 f"{target.describe()}", hint=f"run {RELOCK_TOOLS}" + ("" if source.lock else f" after adding {override}"))
    return lock


def lock_tools(workspace_root: str) -> None:
    """``pbuild lock --tools``: resolve every tool for the workspace's target and write its lock.

    The lock goes to the workspace's ``[python.tools.<tool>] lock`` when set, else into pbuild's
    built-in package (``<tool>-<interpreter>.lock``), each written atomically.
    """
    from pbuild.lib import atomicio
    from pbuild.rules.python.config import read_python_target
    from pbuild.rules.python.lock import read_workspace, resolve
    from pbuild.rules.python.lockfile import render_lock

    config = read_workspace(workspace_root)
    where = os.path.join(workspace_root, "WORKSPACE.toml")
    target = read_python_target(config, where=where)
    python = config.get("python", {})
    builtin_dir = package_dir(workspace_root, BUILTIN_PACKAGE)  # pbuild's installation, not the workspace
    for tool in TOOLS:
        source = read_tool_source(python, tool, where=where)
        in_path = (os.path.join(workspace_root, source.requirements) if source.requirements
                   else os.path.join(builtin_dir, f"{tool}.in"))
        try:
            with open(in_path, encoding="utf-8") as handle:
                requirements = handle.read()
        except FileNotFoundError:
            raise PythonLockError(f"the {tool} requirements {in_path} do not exist", location=Location(in_path),
                            hint=f"list the tool's requirements there (e.g. {tool})") from None
        lock = resolve(requirements, target, requirements_path=in_path)
        out_path = (os.path.join(workspace_root, source.lock) if source.lock
                    else os.path.join(builtin_dir, builtin_lock_name(tool, target)))
        text = render_lock(lock, command=RELOCK_TOOLS, source=os.path.basename(in_path),
                           lock_name=os.path.basename(out_path))
        atomicio.write_text(out_path, text, parents=True)
        shown = source.lock or f"pbuild's built-in {os.path.basename(out_path)}"
        print(f"pbuild: locked {tool} ({len(lock.projects)} projects) for {target.describe()} into {shown}",
              file=sys.stderr)
