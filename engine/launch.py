"""Starting what ``pbuild run`` built: exec a binary, or hand an image to the launcher.

Kept apart (and import-light) so that a ``pbuild run`` with nothing to rebuild goes from the
up-to-date check straight here, without loading the build machinery.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

# A run plan is plain data so the up-to-date stamp can store it:
#   ("image", layout_dir)                       run the OCI layout with the launcher
#   ("exec", argv, env, keep_dashdash, root)    exec argv (+ the user's args) with env added
#   ("toolchain", argv, env, keep_dashdash, root, tree, label)
#                                               the same on the toolchain's unpacked ``tree`` as
#                                               ``/``, with the workspace, the working directory
#                                               and pbuild-out seen at their own paths
RunPlan = tuple[Any, ...]


def execute_plan(plan: RunPlan, extra: Sequence[str], *, user_umask: int) -> int:
    """Start the plan with the user's arguments; returns only for images (the launcher's code)."""
    if plan[0] == "image":
        from pbuild.tools.launcher import main as launcher_main

        return int(launcher_main(["run", f"oci:{plan[1]}", *extra]))
    if plan[0] == "toolchain":
        return _exec_on_toolchain(plan, extra, user_umask=user_umask)
    _, argv_prefix, plan_env, keep_dashdash, root = plan
    args = list(extra)
    if args[:1] == ["--"] and not keep_dashdash:
        args = args[1:]
    argv = [*argv_prefix, *args]
    env = dict(os.environ)
    env.update(plan_env)
    env["BUILD_WORKSPACE_DIRECTORY"] = root
    env["BUILD_WORKING_DIRECTORY"] = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    os.umask(user_umask)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        from pbuild.engine.errors import BuildFailed

        raise BuildFailed(f"cannot start {argv[0]}: {exc.strerror}",
                          hint="check the target's interpreter ([python] interpreter in WORKSPACE.toml)") from None
    return 0  # not reached


# What a program on a toolchain finds on its PATH (the toolchain's, never the host's).
_TOOLCHAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _exec_on_toolchain(plan: RunPlan, extra: Sequence[str], *, user_umask: int) -> int:
    """Start the program of a toolchain plan in its root (tools/sandbox.py ``exec_on_root``)."""
    from pbuild.engine.errors import BuildFailed
    from pbuild.tools.sandbox import SandboxRequestError, exec_on_root

    _, argv_prefix, plan_env, keep_dashdash, root, tree, label = plan
    program = argv_prefix[0]
    if program.startswith("/") and not os.path.lexists(tree + program):
        raise BuildFailed(f"cannot start {program}: toolchain {label} has no such program",
                          hint=f"add the Debian package that provides it to the packages of {label}, "
                               "then run `./pbuild lock --debian`")
    args = list(extra)
    if args[:1] == ["--"] and not keep_dashdash:
        args = args[1:]
    cwd = os.getcwd()
    env = dict(os.environ)
    env.update(plan_env)
    env["PATH"] = _TOOLCHAIN_PATH
    env["BUILD_WORKSPACE_DIRECTORY"] = root
    env["BUILD_WORKING_DIRECTORY"] = cwd
    out = os.path.join(root, "pbuild-out")
    # pbuild-out may be a link to scratch space: its target is bound too.
    binds = sorted({root, cwd, out, os.path.realpath(out)})
    sys.stdout.flush()
    sys.stderr.flush()
    os.umask(user_umask)
    try:
        exec_on_root(tree, [*argv_prefix, *args], env, binds=binds, cwd=cwd)
    except SandboxRequestError as exc:
        raise BuildFailed(f"cannot start {program} on toolchain {label}: {exc}",
                          hint="run pbuild from a folder of the workspace, or check the toolchain target") from None
