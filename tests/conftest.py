"""Fixtures every test layer shares: fixture workspaces, the CLI runner, a folder for uid 65534, a
guarded good build; and the CI rule that a skip for a missing tool fails the run.

The helpers behind them (``Runner``, ``write_tree``, ``Guard``...) are in ``tests/support/runner.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.runner import Guard, Runner, WorkspaceFactory, write_tree


@pytest.fixture
def workspace(tmp_path: Path) -> WorkspaceFactory:
    """``workspace(files, name="ws", workspace_toml="")`` writes a fixture workspace and returns its root."""

    def make(files: Mapping[str, str | bytes] | None = None, *, name: str = "ws",
             workspace_toml: str = "[workspace]\nname = \"fixture\"\n") -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        write_tree(root, {"WORKSPACE.toml": workspace_toml, **(files or {})})
        return root

    return make


@pytest.fixture
def pbuild(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A folder owned by uid/gid 65534 outside pytest's private temp root (which only root can enter)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 65534")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (Debian package util-linux)")
    home = Path(tempfile.mkdtemp(prefix="pbuild-nobody-"))
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def guarded(pbuild: Runner) -> Callable[[Path], Guard]:
    """``guarded(ws)`` builds //good:x in ``ws`` (which must hold GOOD_PACKAGE) and returns a Guard."""

    def build(ws: Path) -> Guard:
        result = pbuild("build", "//good:x", cwd=ws)
        assert result.code == 0, str(result)
        return Guard(ws, pbuild.cache)

    return build


# In CI (CI=true, as .ci/run is started), a test skipped because a tool or package is missing means
# .ci/install forgot it: fail instead of skipping, so a green run cannot hide a missing install.
_MISSING_MARKERS = ("not installed", "could not import", "No module named")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    if any(marker in reason for marker in _MISSING_MARKERS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI because something is missing (add it to .ci/install): {reason}"
