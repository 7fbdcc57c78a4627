"""Running the launcher (``python -m pbuild.tools.launcher``) as a user would, and cleaning up after it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

LAUNCHER = (sys.executable, "-m", "pbuild.tools.launcher")


def kill_leftovers(runtime: Path) -> None:
    """A failed test must not leave detached containers running."""
    from pbuild.tools.launcher.state import ContainerState, is_alive

    killed = []
    for path in runtime.glob("containers/*/state.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = ContainerState.from_json(path.read_text())
            if is_alive(state):
                os.kill(state.pid, signal.SIGKILL)
                killed.append(state)
    # A killed container's supervisor still records its exit in the container's folder: wait for
    # the processes to go, so that removing the folder does not race that last write.
    deadline = time.monotonic() + 10
    while any(is_alive(state) for state in killed) and time.monotonic() < deadline:
        time.sleep(0.02)


def launch(
    env: dict[str, str], *args: str, input: str | None = None, prefix: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """One launcher command (after ``prefix``, e.g. ``unshare ...``), its output captured."""
    return subprocess.run(
        [*prefix, *LAUNCHER, *args], env=env, input=input, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def run_ok(env: dict[str, str], *args: str, input: str | None = None) -> str:
    """The stdout of a launcher command that must succeed."""
    result = launch(env, *args, input=input)
    assert result.returncode == 0, f"{args} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout
