"""Where the tests find the repository and the fixture workspaces, from any test layer."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def pbuild_folders() -> tuple[str, ...]:
    """The repository folders that are pbuild's import packages (``engine``, ``lib``, ...), as
    pyproject's package-dir maps them: what a copy of pbuild's sources must hold."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tuple(sorted(tomllib.load(handle)["tool"]["setuptools"]["package-dir"].values()))
