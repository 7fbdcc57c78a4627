"""The in-process action that builds a PEX with the host's pex (a pbuild dependency).

It is an in-process action rather than a sandboxed process action because the pex tool lives in
pbuild's own environment, which the sandbox does not show (it may sit inside the workspace, whose
undeclared files are hidden). The action still reads only its declared inputs: the staged source
tree and the locked wheel files, passed to pex as files; pex resolves nothing
(``--no-pypi --intransitive --no-build``), and its version is part of the action key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from pbuild.engine.api import ActionIO
from pbuild.engine.errors import BuildFailed
from pbuild.lib.determinism import source_date_epoch, zip_epoch

BUILD_PEX_VERSION = "2"


def pex_version() -> str:
    """The host pex's version, for the action key."""
    from pex.version import __version__

    return str(__version__)


def pex_root() -> str:
    """pex's cache folder: ``$XDG_CACHE_HOME/pbuild/pex`` (default ``~/.cache/pbuild/pex``).

    Only pex's own cache (its pip, unpacked wheels): it never changes what is built.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "pbuild", "pex")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:  # no writable home (a service user): a private folder in the temp dir
        import tempfile

        root = os.path.join(tempfile.gettempdir(), f"pbuild-pex-{os.getuid()}")
    return root


def build_pex(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Run pex over ``params['tree']`` and ``params['wheels']`` into ``params['output']``.

    Other ``params``: ``main_module`` or
    ``entry_point``, ``shebang``, ``env`` and ``args`` to bake in.
    """
    wheel_dir = os.path.join(io.tmpdir, "wheels")
    os.makedirs(wheel_dir, exist_ok=True)
    wheels = []
    for wheel in params["wheels"]:
        # Wheel files as requirements: pex takes them as they are, without asking pip to resolve
        # (seconds faster); PEX-INFO records them as name==version, not by path.
        link = os.path.join(wheel_dir, os.path.basename(wheel))
        os.symlink(os.path.abspath(io.input_path(wheel)), link)
        wheels.append(link)
    argv = [
        sys.executable, "-m", "pex",
        "--no-pypi", "--intransitive", "--no-build", "--no-compile",
        "--python-shebang", params["shebang"],
        "-D", os.path.abspath(io.input_path(params["tree"])),
        "-o", io.output_path(params["output"]),
        *wheels,
    ]
    if params.get("main_module"):
        argv += ["-m", params["main_module"]]
    elif params.get("entry_point"):
        argv += ["-e", params["entry_point"]]
    for key, value in sorted(params.get("env", {}).items()):
        argv.append(f"--inject-env={key}={value}")
    if params.get("args"):
        import shlex

        argv.append("--inject-args=" + shlex.join(params["args"]))
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": io.tmpdir,
        # pex's own cache (its pip, unpacked wheels) outlives the action: a fresh one costs seconds
        # per PEX. It never changes what is built, only how fast.
        "PEX_ROOT": pex_root(),
        "PYTHONHASHSEED": "0",
        # The build's epoch (in this action's key through the base environment), not before 1980.
        "SOURCE_DATE_EPOCH": str(zip_epoch(source_date_epoch())),
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        # pex is importable here (a venv, or the modules of a self-hosted pbuild.pex): the child
        # gets the same import path so `-m pex` finds it either way.
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=io.tmpdir, check=False)
    if result.returncode != 0:
        raise BuildFailed(f"pex failed (exit {result.returncode}):\n{(result.stderr + result.stdout)[-3000:]}",
                          label=io.label)
