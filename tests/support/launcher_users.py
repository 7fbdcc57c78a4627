"""Run the launcher CLI as root or as an unprivileged user (uid 65534), in a folder of its own.

A test module defines its ``launcher_user`` fixture over :func:`user_folder`, parametrized with
:data:`USERS`, so each test runs once as root and once as nobody (skipped without ``setpriv``).
The user's folder is outside pytest's ``tmp_path`` (0700 root), owned by that user, with its own
layer store and runtime dir.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.launcher import LAUNCHER, kill_leftovers

NOBODY = 65534


@dataclass
class LauncherUser:
    """One user's view: ``base`` (theirs), ``env`` (its store and runtime dir under ``base``)."""

    uid: int
    base: Path
    env: dict[str, str]

    @property
    def name(self) -> str:
        return "root" if self.uid == 0 else "nobody"

    @property
    def store(self) -> Path:
        return Path(self.env["PBUILD_LAYER_STORE"])

    def give(self, *paths: Path) -> None:
        """Make ``paths`` (and everything below) this user's."""
        for top in paths:
            for path in [top, *top.rglob("*")] if top.is_dir() and not top.is_symlink() else [top]:
                os.chown(path, self.uid, self.uid, follow_symlinks=False)

    def launch(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *LAUNCHER, *args], env={**self.env, **(env or {})}, cwd=self.base,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.prefix(), *LAUNCHER, *args], env={**self.env, **(env or {})}, cwd=self.base,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def prefix(self) -> list[str]:
        if self.uid == 0:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]


USERS = ["root", "nobody"]


def user_env(home: Path) -> dict[str, str]:
    """The environment of a launcher user whose home, layer store and runtime dir are under ``home``."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PBUILD_LAYER_STORE": str(home / "layers"),
        "PBUILD_RUNTIME_DIR": str(home / "run"),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }


def run_script_as_nobody(
    home: Path, script: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Give ``home`` to uid 65534 and run the Python ``script`` (with ``args``) as that user there.

    Whatever the script's containers leave running is killed afterwards.
    """
    for path in [home, *home.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    try:
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", script,
             *args],
            capture_output=True, text=True, env=user_env(home), timeout=timeout, check=False, cwd=home,
        )  # fmt: skip
    finally:
        kill_leftovers(home / "run")


@contextlib.contextmanager
def user_folder(name: str) -> Iterator[LauncherUser]:
    """A fresh folder for ``name`` ("root" or "nobody"), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the launcher tests run as root (and switch to uid 65534 themselves)")
    uid = 0 if name == "root" else NOBODY
    if uid and not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    base = Path(tempfile.mkdtemp(prefix="pbuild-launcher-"))
    os.chmod(base, 0o755)
    user = LauncherUser(uid, base, user_env(base))
    user.give(base)
    try:
        yield user
    finally:
        kill_leftovers(base / "run")
        remove_settled_tree(base)


def remove_settled_tree(base: Path, *, settle_s: float = 10.0) -> None:
    """Remove ``base``; a folder that fills while it is emptied (a container's supervisor writing its
    exit record after its container was killed) is tried again until ``settle_s`` has passed."""
    from pbuild.tools.fstree import remove_tree

    deadline = time.monotonic() + settle_s
    while True:
        try:
            remove_tree(str(base))
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
