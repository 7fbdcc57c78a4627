"""In-process actions for locked wheels: fetch one wheel (checked against its pinned hash) and
install it into a directory tree with hash-based ``.pyc`` files, ready to put on ``sys.path``.

Fetch is the one kind of action that touches the network. It asks pip (so the user's index,
find-links and certificates apply) for exactly ``name==version`` for the target platform, then
checks the file's sha256 against the lock; the engine stores the verified wheel in its cache,
and later builds need no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pbuild.engine.api import ActionIO
from pbuild.engine.errors import BuildFailed, HashMismatch
from pbuild.rules.python.bytecode import compile_folder

FETCH_VERSION = "1"
INSTALL_VERSION = "3"  # 3: compiled by the toolchain's Python

class NoWheelForPlatform(BuildFailed):
    """pip found no wheel of a locked project for the target platform."""


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_command() -> list[str]:
    """``python -m pip`` for this interpreter, or a :class:`BuildFailed` that says how to get pip."""
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        raise BuildFailed(f"pip is not installed for {sys.executable}, and pbuild fetches wheels with it",
                          hint=f"install it: {sys.executable} -m ensurepip (or your distribution's python3-pip)")
    return [sys.executable, "-m", "pip"]


def fetch_wheel(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Download ``name==version`` for the target with pip and verify it against the lock.

    ``params``: ``name``, ``version``, ``filename``, ``sha256`` (from the lock), ``pip_args`` (the
    target's platform options), ``platform`` (for messages), ``output`` (the wheel's path) and,
    for a tool lock, ``relock`` (the command that re-locks it, for messages).
    """
    relock = params.get("relock", "./pbuild lock --python")
    download_dir = os.path.join(io.tmpdir, "download")
    os.makedirs(download_dir, exist_ok=True)
    requirement = f"{params['name']}=={params['version']}"
    argv = [
        *pip_command(), "download", "--no-deps", "--quiet", "--no-input",
        "--progress-bar", "off", *params["pip_args"], "--dest", download_dir, requirement,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = result.stderr + result.stdout
        if "No matching distribution found" in output or "Could not find a version" in output:
            raise NoWheelForPlatform(
                f"no wheel of {requirement} for the target platform {params['platform']}",
                label=io.label,
                hint=f"re-lock with {relock}, or change [python] in WORKSPACE.toml",
            )
        tail = "\n".join(line for line in output.splitlines() if "is ignored:" not in line)
        raise BuildFailed(f"pip could not download {requirement}:\n{tail[-2000:]}", label=io.label,
                          hint="check your pip configuration (index, network, certificates)")
    downloaded = sorted(os.listdir(download_dir))
    if len(downloaded) != 1 or not downloaded[0].endswith(".whl"):
        raise BuildFailed(f"pip download of {requirement} produced {downloaded}, expected one wheel",
                          label=io.label)
    path = os.path.join(download_dir, downloaded[0])
    verify_wheel(path, expected_sha256=params["sha256"], expected_filename=params["filename"], label=io.label,
                 relock=relock)
    shutil.move(path, io.output_path(params["output"]))


def verify_wheel(path: str, *, expected_sha256: str, expected_filename: str, label: object = None,
                 relock: str = "./pbuild lock --python") -> None:
    """Raise :class:`HashMismatch` naming the file and both hashes unless ``path`` is the locked wheel."""
    actual = sha256_file(path)
    name = os.path.basename(path)
    if actual != expected_sha256:
        raise HashMismatch(
            f"{name}: sha256 {actual} does not match the lock's sha256 {expected_sha256}"
            + (f" (locked file {expected_filename})" if name != expected_filename else ""),
            label=label,
            hint="the index serves different bytes than when the lock was made; if that is expected, "
            f"re-lock with {relock}",
        )


def install_wheel(io: ActionIO, params: Mapping[str, Any]) -> None:
    """Unpack a wheel into an importable tree (``params['output']``) and compile it.

    Layout: ``purelib``/``platlib`` at the top (the folder goes on ``sys.path`` as is), scripts in
    ``bin/``, data in ``data/``, headers in ``include/``. ``params['python']`` is an interpreter of
    the target's X.Y version used to compile, or empty to skip compiling.
    """
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    out = io.output_path(params["output"])
    os.makedirs(out, exist_ok=True)
    destination = SchemeDictionaryDestination(
        scheme_dict={
            "purelib": out,
            "platlib": out,
            "scripts": os.path.join(out, "bin"),
            "data": os.path.join(out, "data"),
            "headers": os.path.join(out, "include"),
        },
        # Scripts find the interpreter on PATH: no build-machine path ends up in the tree.
        interpreter="/usr/bin/env python3",
        script_kind="posix",
    )
    with WheelFile.open(Path(io.input_path(params["wheel"]))) as source:
        install(source, destination, additional_metadata={})
    compile_folder(io, out, interpreter=params.get("interpreter", ""), python_version=params["python_version"],
                   checked=False)
