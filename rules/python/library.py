"""``py_library`` and what py_binary/py_test share with it: import paths and the staged tree.

Import paths. A source imports by its path from the workspace root by default (``mypkg/util.py``
is ``mypkg.util``). Two attributes change that, for sources laid out differently on disk:

* ``imports = ["."]`` (folders relative to the package) adds each folder as an import root: a
  source below it is staged *also* at its path relative to that folder (``app/lib/x.py`` with
  ``imports = ["lib"]`` in package ``app`` imports as ``x`` as well as ``app.lib.x``).
* ``prefix = "pbuild"`` puts every source's import path below a prefix: this repo keeps
  ``engine/cli.py`` on disk but imports it as ``pbuild.engine.cli``.

Generated sources (``pbuild-out/<package>/x.py``) import as ``<package>/x.py``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from pbuild.engine.api import OUT_DIR, ActionIO, DefaultInfo, File, Provider, RuleContext, attr, rule
from pbuild.rules.python.bytecode import compile_folder
from pbuild.rules.python.config import PythonTarget
from pbuild.rules.python.providers import PyInfo, PySource, Wheel

STAGE_VERSION = "3"  # 3: compiled by the toolchain's Python

COMMON_ATTRS = {
    "srcs": attr.label_list("Python source files (`.py`, `.pyi`).", allow_files=("py", "pyi")),
    "deps": attr.label_list(
        "py_library targets and locked wheels (`//third_party/python:numpy`) this code imports. "
        "Only these are importable: an import of anything else fails (strict dependencies).",
        providers=[PyInfo],
    ),
    "data": attr.label_list("Files the code reads at run time, staged beside the sources.", allow_files=True),
    "imports": attr.string_list(
        "Folders, relative to the package, that are added as import roots (`[\".\"]` makes the "
        "package's own files importable by their bare names)."
    ),
    "prefix": attr.string(
        "An import-path prefix for every source and data file (`pbuild` makes `engine/cli.py` "
        "import as `pbuild.engine.cli`).",
        default="",
    ),
}


def import_paths(ctx: RuleContext, file: File) -> list[str]:
    """Every import path ``file`` is staged at, following ``imports`` and ``prefix``."""
    path = file.path
    out_prefix = OUT_DIR + "/"
    if not file.is_source and path.startswith(out_prefix):
        path = path[len(out_prefix):]
    found = [path]
    for folder in ctx.attr.get("imports") or ():
        root = posixpath.normpath(posixpath.join(ctx.package, folder)) if ctx.package else posixpath.normpath(folder)
        if root.startswith("..") or posixpath.isabs(root):
            ctx.fail(f"import root {folder!r} leaves the workspace", attr="imports")
        if root in ("", "."):
            continue
        if path.startswith(root + "/") and path[len(root) + 1:] not in found:
            found.append(path[len(root) + 1:])
    prefix = (ctx.attr.get("prefix") or "").strip("/")
    return [f"{prefix}/{p}" if prefix else p for p in found]


def collect_py_info(ctx: RuleContext) -> PyInfo:
    """This target's sources and data (staged by import path) plus the closure of its deps."""
    sources: set[PySource] = set()
    for file in (*ctx.files.srcs, *ctx.files.data):
        for path in import_paths(ctx, file):
            sources.add(PySource(file=file, import_path=path))
    wheels: set[Wheel] = set()
    for dep in ctx.attr.deps:
        info = dep[PyInfo]
        sources.update(info.sources)
        wheels.update(info.wheels)
    claimed: dict[str, File] = {}
    for source in sorted(sources):
        other = claimed.setdefault(source.import_path, source.file)
        if other != source.file:
            ctx.fail(f"{other.path} and {source.file.path} both import as {source.import_path}",
                     hint="rename one, or change `imports`/`prefix` so their import paths differ")
    by_project: dict[str, Wheel] = {}
    for wheel in sorted(wheels):
        seen = by_project.setdefault(wheel.name, wheel)
        if seen != wheel:
            ctx.fail(f"two versions of {wheel.name} in the dependencies: {seen.filename} and {wheel.filename}")
    return PyInfo(sources=tuple(sorted(sources)), wheels=tuple(sorted(wheels)))


def with_tool(info: PyInfo, tool: PyInfo) -> PyInfo:
    """``info`` plus a tool's closure (py_test's pytest); the user's own wheels win.

    A project both lock (the user's requirements.lock and the tool's lock) pin is taken from the
    user's, so code under test imports the version it ships with; the tool gets the rest.
    """
    mine = {wheel.name for wheel in info.wheels}
    wheels = set(info.wheels) | {wheel for wheel in tool.wheels if wheel.name not in mine}
    claimed = {source.import_path for source in info.sources}
    sources = set(info.sources) | {s for s in tool.sources if s.import_path not in claimed}
    return PyInfo(sources=tuple(sorted(sources)), wheels=tuple(sorted(wheels)))


def toolchain_python(ctx: RuleContext, target: PythonTarget) -> str:
    """The interpreter of the target's Python toolchain (a path inside its tree), "" on the host
    toolchain; a toolchain without a Python, or of another version than the locks', is an error."""
    toolchain = ctx.toolchain
    if toolchain is None:
        return ""
    if not toolchain.python:
        ctx.fail(f"toolchain {toolchain.label} holds no Python interpreter", attr="toolchain",
                 hint="use a deb_packages target with a python3.X package (e.g. python3-minimal), "
                      "or an image with one")
    if toolchain.python_version and toolchain.python_version != target.version:
        ctx.fail(f"toolchain {toolchain.label} has Python {toolchain.python_version}, but the workspace's "
                 f"locks are for Python {target.version} ([python] version in WORKSPACE.toml)",
                 attr="toolchain", hint="use a toolchain of the locked Python, or lock for its version")
    return toolchain.python


def declare_staged_tree(ctx: RuleContext, name: str, info: PyInfo, target: PythonTarget) -> File:
    """Declare the action that copies ``info.sources`` to their import paths and compiles them
    (with the target's Python toolchain)."""
    tree = ctx.declare_directory(name)
    files = sorted({(s.import_path, s.file.path) for s in info.sources})
    ctx.actions.call(
        stage_tree,
        version=STAGE_VERSION,
        params={"files": [list(pair) for pair in files], "output": tree.path, "python_version": target.version,
                "interpreter": toolchain_python(ctx, target)},
        inputs=tuple(s.file for s in info.sources),
        outputs=(tree,),
        mnemonic="PyStage",
        progress=f"staging sources of {ctx.label}",
        toolchain=ctx.toolchain,
    )
    return tree


def stage_tree(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Copy each ``[import_path, input]`` of ``params['files']`` below the output and compile."""
    out = io.output_path(params["output"])
    os.makedirs(out, exist_ok=True)
    for import_path, source in params["files"]:
        destination = os.path.join(out, import_path)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.isdir(io.input_path(source)):  # a directory output given as data
            shutil.copytree(io.input_path(source), destination, dirs_exist_ok=True)
            continue
        shutil.copyfile(io.input_path(source), destination)
        mode = os.stat(io.input_path(source)).st_mode
        os.chmod(destination, 0o755 if mode & 0o111 else 0o644)
    if any(path.endswith(".py") for path, _ in params["files"]):
        compile_folder(io, out, interpreter=params.get("interpreter", ""),
                       python_version=params["python_version"], checked=True)


def check_srcs_are_python(ctx: RuleContext, files: Sequence[File]) -> None:
    """Refuse srcs that are not Python files with the attribute's line."""
    bad = [f.path for f in files if f.extension not in ("py", "pyi")]
    if bad:
        ctx.fail(f"srcs must be .py or .pyi files, not {', '.join(bad)}", attr="srcs",
                 hint="put other files in `data`")


@rule(
    "py_library",
    attrs=COMMON_ATTRS,
    doc="Python sources with their dependencies, for py_binary and py_test targets to use.",
)
def py_library(ctx: RuleContext) -> Sequence[Provider]:
    check_srcs_are_python(ctx, ctx.files.srcs)
    info = collect_py_info(ctx)
    return [info, DefaultInfo(files=tuple(ctx.files.srcs), runfiles=tuple(ctx.files.data))]
