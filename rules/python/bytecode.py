"""Bytecode for a folder on disk: the trees of ``py_library`` sources and installed wheels.

Every ``.py`` below an action's output folder gets a hash-based ``.pyc`` (PEP 552) in its
``__pycache__``, written by ``py_compile`` run by the target's interpreter (the toolchain's, on
its tree; on the host toolchain a host interpreter of the same ``X.Y``). ``co_filename`` is the
module's path relative to the folder, because the folder goes onto ``sys.path`` wherever it is
put: ``pbuild run``, a PEX, an image layer.

Not :mod:`pbuild.rules.oci.pyc`, which compiles layer entries (sources that exist only in
memory, named by their absolute path in the image, for the image's and the Debian standard
library's layers) into ``.pyc`` bytes. The two write different bytes for one module (the file
name inside, and that worker's interning), and a tree's bytes are inputs of every action above
it, so making one the other would change those actions' outputs and keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from pbuild.engine.api import ActionIO
from pbuild.engine.errors import BuildFailed

# Compiles every .py below a folder into hash-based .pyc files that record folder-relative paths.
# It runs in a child with PYTHONHASHSEED=0: marshal writes frozensets in hash order, so a random
# seed would make the bytes differ between builds.
_COMPILE_SCRIPT = """
import os, py_compile, sys
root, mode = sys.argv[1], py_compile.PycInvalidationMode[sys.argv[2]]
for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        if name.endswith(".py"):
            path = os.path.join(folder, name)
            try:
                py_compile.compile(path, dfile=os.path.relpath(path, root), doraise=True, invalidation_mode=mode)
            except py_compile.PyCompileError:
                pass  # not Python 3 (test data, templates): imported it would fail anyway
"""


def compile_folder(io: ActionIO, out: str, *, interpreter: str, python_version: str, checked: bool) -> None:
    """Compile the output folder ``out`` in place with the action's toolchain Python.

    ``interpreter`` is its path inside the toolchain tree: the interpreter that will import the
    bytes. Only an action on the host toolchain falls back to a host interpreter of
    ``python_version``, and without one the tree keeps no bytecode.
    """
    if interpreter and io.toolchain_root:
        parent, name = os.path.split(out)
        log = os.path.join(io.tmpdir, f"compile-{name}.log")
        code = io.run_sandboxed([interpreter, "-s", "-S", "-c", _COMPILE_SCRIPT, f"/execroot/{name}",
                                 "CHECKED_HASH" if checked else "UNCHECKED_HASH"],
                                exec_root=parent, writable_dirs=(name,), stdout_path=log, stderr_path=log)
        if code != 0:
            with open(log, encoding="utf-8", errors="replace") as handle:
                raise BuildFailed(f"compiling {name} with the toolchain's {interpreter} failed (exit {code}):\n"
                                  f"{handle.read()[-2000:]}", label=io.label)
        return
    python = host_python_for(python_version)
    if python:
        compile_folder_on_host(out, python, checked=checked)


def host_python_for(version: str) -> str:
    """An interpreter of the target's X.Y on this host to compile with, or '' if there is none."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    return shutil.which(f"python{version}") or ""


def compile_folder_on_host(root: str, python: str, *, checked: bool) -> None:
    """Compile every ``.py`` below ``root`` to hash-based ``.pyc`` with ``python``, reproducibly.

    ``checked`` pycs are revalidated against their source's hash at import (first-party code);
    unchecked ones are trusted (installed wheels, which never change in place).
    """
    mode = "CHECKED_HASH" if checked else "UNCHECKED_HASH"
    env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    # -s -S keep the host's site-packages out; not -I, which would also ignore PYTHONHASHSEED.
    result = subprocess.run([python, "-s", "-S", "-c", _COMPILE_SCRIPT, root, mode],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise BuildFailed(f"compiling {os.path.basename(root)} failed:\n{result.stderr[-2000:]}")
