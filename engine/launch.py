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
RunPlan = tuple[Any, ...]


def execute_plan(plan: RunPlan, extra: Sequence[str], *, user_umask: int) -> int:
    """Start the plan with the user's arguments; returns only for images (the launcher's code)."""
    if plan[0] == "image":
        from pbuild.tools.launcher import main as launcher_main

        return int(launcher_main(["run", f"oci:{plan[1]}", *extra]))
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
