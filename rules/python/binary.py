"""``py_binary`` (a PEX to ship, and a fast start for ``pbuild run``) and ``py_test`` (pytest).

A py_binary has two products. ``<name>.pex`` is built by pex from the staged sources and the
locked wheel files only (no index, no resolve, no sdist builds) and is byte-for-byte reproducible.
``pbuild run`` does not use it: unzipping a PEX on every start is slow. It starts
``python -s -S <name>.bootstrap.py`` instead, which imports from the staged tree and the wheels'
installed trees (cached directory outputs). py_test starts the same way with pytest as the main,
inside the engine's sandbox, which holds only declared sources and wheels; pytest itself is a
tool locked by pbuild (``tools.py``), not a requirement of the user's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pbuild.engine.api import DefaultInfo, File, Provider, RuleContext, RunInfo, TestInfo, attr, rule
from pbuild.rules.python.bootstrap import render_bootstrap
from pbuild.rules.python.config import PythonTarget
from pbuild.rules.python.library import (
    COMMON_ATTRS,
    check_srcs_are_python,
    collect_py_info,
    declare_staged_tree,
    import_paths,
    toolchain_python,
    with_tool,
)
from pbuild.rules.python.pex import BUILD_PEX_VERSION, build_pex, pex_version
from pbuild.rules.python.providers import PyBinaryInfo, PyInfo
from pbuild.rules.python.tools import BUILTIN_PACKAGE

_ENTRY_POINT_HINT = 'entry_point looks like "package.module:function"'
# pytest as a tool (rules/python/tools.py): no user requirement needed.
PYTEST_TOOL = f"//{BUILTIN_PACKAGE}:pytest"

BINARY_ATTRS = {
    **COMMON_ATTRS,
    "main": attr.label(
        "The file to run as `__main__` (one of `srcs`). Default: `<name>.py` if it is in `srcs`.",
        allow_files=("py",),
    ),
    "entry_point": attr.string("Instead of `main`: `module:function` to call; its return value is the exit code."),
    "env": attr.string_dict("Environment variables set when the binary runs (also baked into the PEX)."),
    "args": attr.string_list("Arguments put before the user's arguments (also baked into the PEX)."),
}

TEST_ATTRS = {
    **COMMON_ATTRS,
    "srcs": attr.label_list("Test files (`test_*.py`) and their helpers; pytest collects them.",
                            allow_files=("py", "pyi"), required=True),
    "env": attr.string_dict("Environment variables of the test process."),
    "args": attr.string_list("Extra pytest arguments."),
    "timeout": attr.integer("Seconds before the test is killed.", default=300),
    "pytest": attr.label(
        "The pytest that runs the tests. Default: pbuild's built-in tool, locked by pbuild (or by the "
        "workspace's `[python.tools.pytest]` lock); name a target of your own, such as "
        "`//third_party/python:pytest`, to use that instead. Projects your deps also pin come from "
        "your lock.",
        default=PYTEST_TOOL, providers=[PyInfo]),
}


def _python_target(ctx: RuleContext) -> PythonTarget:
    return PythonTarget.from_config(ctx.config("python"))


def _module_name(import_path: str) -> str:
    stem = import_path[: -len(".py")]
    if stem.endswith("/__main__"):
        stem = stem[: -len("/__main__")]
    return stem.replace("/", ".")


def _launcher(ctx: RuleContext, info: PyInfo, tree: File, mode: str, target: str | list[str]) -> File:
    launcher = ctx.declare_file(f"{ctx.label.name}.bootstrap.py")
    sites = [w.site.path for w in info.wheels if w.site is not None]
    text = render_bootstrap(label=str(ctx.label), self_path=launcher.path, runfiles=tree.path,
                            sites=sites, mode=mode, target=target)
    ctx.actions.write(launcher, text, mnemonic="PyLauncher")
    return launcher


def _runfiles(info: PyInfo, tree: File, launcher: File) -> tuple[File, ...]:
    return (launcher, tree, *(w.site for w in info.wheels if w.site is not None))


def _interpreter_argv(ctx: RuleContext, target: PythonTarget) -> tuple[str, ...]:
    """The interpreter command: the toolchain's Python (the bytes the image runs), else the host's
    ``[python] interpreter``."""
    interpreter = toolchain_python(ctx, target) or target.interpreter
    # -s -S: neither the user's nor the system's site-packages; the launcher sets sys.path.
    # A bare command name is looked up on PATH when the program starts.
    return (interpreter, "-s", "-S")


@rule(
    "py_binary",
    attrs=BINARY_ATTRS,
    executable=True,
    toolchain="python",
    doc="A Python program: `<name>.pex` (a reproducible PEX of its sources and locked wheels) and "
        "`pbuild run` support (started from installed trees, no unzipping).",
)
def py_binary(ctx: RuleContext) -> Sequence[Provider]:
    check_srcs_are_python(ctx, ctx.files.srcs)
    target = _python_target(ctx)
    main_module: str | None = None
    entry_point: str | None = ctx.attr.entry_point or None
    main_file = ctx.file.main if ctx.attr.main is not None else None
    if main_file is not None and entry_point:
        ctx.fail("set either `main` or `entry_point`, not both", attr="entry_point")
    if entry_point:
        module, _, function = entry_point.partition(":")
        if not module or not function or not all(p.isidentifier() for p in (*module.split("."), *function.split("."))):
            ctx.fail(f"entry_point {entry_point!r} is not module:function", attr="entry_point", hint=_ENTRY_POINT_HINT)
    else:
        if main_file is None:
            wanted = f"{ctx.label.name}.py"
            candidates = [f for f in ctx.files.srcs if f.basename == wanted]
            if len(candidates) != 1:
                ctx.fail(f"no `main` given and srcs has no single {wanted}", attr="main",
                         hint='set main = "file.py" (one of srcs) or entry_point = "module:function"')
            main_file = candidates[0]
        if main_file not in ctx.files.srcs:
            srcs = ", ".join(f.path for f in ctx.files.srcs) or "nothing"
            ctx.fail(f"main {main_file.path} is not in srcs (srcs: {srcs})", attr="main",
                     hint=f'add "{main_file.basename}" to srcs, or point main at one of them')
        main_module = _module_name(import_paths(ctx, main_file)[0])
        if not all(part.isidentifier() for part in main_module.split(".")):
            ctx.fail(f"main {main_file.path} imports as {main_module!r}, which is not a module name",
                     attr="main", hint="name the file and its folders like Python modules (letters, digits, _)")
    info = collect_py_info(ctx)
    tree = declare_staged_tree(ctx, f"{ctx.label.name}.runfiles", info, target)
    if main_module is not None:
        launcher = _launcher(ctx, info, tree, "module", main_module)
    else:
        launcher = _launcher(ctx, info, tree, "entry_point", entry_point or "")
    env = dict(sorted(ctx.attr.env.items()))
    args = tuple(ctx.attr.args)
    pex = ctx.declare_file(f"{ctx.label.name}.pex")
    _declare_pex(ctx, target, info, tree, pex, main_module=main_module, entry_point=entry_point, env=env, args=args)
    run = RunInfo(argv=(*_interpreter_argv(ctx, target), launcher, *args), env=env, toolchain=ctx.toolchain)
    return [
        info,
        PyBinaryInfo(pex=pex, main_module=main_module, entry_point=entry_point, env=env, args=args,
                     runfiles=tree, launcher=launcher),
        DefaultInfo(files=(pex,), runfiles=_runfiles(info, tree, launcher)),
        run,
    ]


def _declare_pex(ctx: RuleContext, target: PythonTarget, info: PyInfo, tree: File, pex: File, *,
                 main_module: str | None, entry_point: str | None, env: dict[str, str], args: tuple[str, ...]) -> None:
    """Declare the action that runs pex over the staged tree and the locked wheel files."""
    shebang = target.interpreter if target.interpreter.startswith("/") else f"/usr/bin/env {target.interpreter}"
    ctx.actions.call(
        build_pex,
        version=f"{BUILD_PEX_VERSION}-pex{pex_version()}",
        params={
            "tree": tree.path,
            "wheels": [w.file.path for w in info.wheels],
            "main_module": main_module or "",
            "entry_point": entry_point or "",
            "shebang": shebang,
            "env": env,
            "args": list(args),
            "output": pex.path,
        },
        inputs=(tree, *(w.file for w in info.wheels)),
        outputs=(pex,),
        mnemonic="PyPex",
        progress=f"building {pex.path}",
    )


@rule(
    "py_test",
    attrs=TEST_ATTRS,
    test=True,
    toolchain="python",
    doc="pytest over `srcs`, run by `pbuild test` in the sandbox against the locked wheels. pytest "
        "is a tool, not your dependency: it comes from pbuild's built-in lock (`//@pbuild/python:pytest`), "
        "which `[python.tools.pytest]` in WORKSPACE.toml or the `pytest` attribute override.",
)
def py_test(ctx: RuleContext) -> Sequence[Provider]:
    check_srcs_are_python(ctx, ctx.files.srcs)
    target = _python_target(ctx)
    info = with_tool(collect_py_info(ctx), ctx.attr.pytest[PyInfo])
    tree = declare_staged_tree(ctx, f"{ctx.label.name}.runfiles", info, target)
    test_files = sorted(import_paths(ctx, f)[0] for f in ctx.files.srcs if f.extension == "py")
    launcher = _launcher(ctx, info, tree, "pytest", test_files)
    runfiles = _runfiles(info, tree, launcher)
    env = {"PYTHONDONTWRITEBYTECODE": "1", **dict(sorted(ctx.attr.env.items()))}
    test = TestInfo(
        argv=(*_interpreter_argv(ctx, target), launcher.path, *ctx.attr.args),
        inputs=runfiles,
        env=env,
        timeout_s=float(ctx.attr.timeout or 300),
        toolchain=ctx.toolchain,
    )
    return [info, DefaultInfo(files=(), runfiles=runfiles), test]
