"""pbuild running on another Python than the test suite's: a venv of pyenv's 3.12 (or 3.13, 3.10)
with pbuild's runtime dependencies, and pbuild's sources on ``PYTHONPATH``.

The toolchain promise is that the Python running pbuild changes no output and no action key; a
second interpreter is how the tests show it.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.paths import REPO, pbuild_folders
from tests.support.runner import Runner

_PREFERRED = ("3.12", "3.13", "3.10")


def find_other_python() -> str | None:
    """A CPython of another minor version than this one (pyenv's, else on PATH), or None."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for version in _PREFERRED:
        if version == mine:
            continue
        found = sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
        if found:
            return found[-1]
        for folder in ("/usr/bin", "/usr/local/bin"):
            if os.access(f"{folder}/python{version}", os.X_OK):
                return f"{folder}/python{version}"
    return None


def make_venv(python: str, dest: Path) -> tuple[Path, Path]:
    """A venv at ``dest`` with pbuild's runtime dependencies, and a source folder mapping the
    ``pbuild`` namespace onto this checkout; returns (venv python, source folder)."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        requirements = tomllib.load(handle)["project"]["dependencies"]
    venv_python = dest / "venv/bin/python"
    if not venv_python.exists():
        subprocess.run([python, "-m", "venv", str(dest / "venv")], check=True, capture_output=True)
        subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *requirements], check=True, capture_output=True, timeout=600)
    source = dest / "src/pbuild"
    source.mkdir(parents=True, exist_ok=True)
    for part in pbuild_folders():
        link = source / part
        if not link.is_symlink():
            link.symlink_to(REPO / part)
    return venv_python, dest / "src"


class OtherPythonRunner(Runner):
    """:class:`Runner` for pbuild on ``python`` with its sources from ``source``."""

    def __init__(self, tmp: Path, python: Path, source: Path) -> None:
        super().__init__(tmp)
        self.python = python
        self.source = source

    def command(self, args: Sequence[str]) -> list[str]:
        return [str(self.python), "-m", "pbuild.engine.cli", *args]

    def env(self, cache: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = super().env(cache, extra)
        env["PYTHONPATH"] = str(self.source)
        return env
