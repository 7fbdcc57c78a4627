"""Real ``pbuild worker`` processes for the remote execution tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.runner import PBUILD, base_env


class WorkerProcess:
    """One ``pbuild worker`` with its own cache dir; stderr goes to ``log``."""

    def __init__(self, tmp: Path, url: str, name: str, *, jobs: int = 1, grace_s: float = 30,
                 instance_name: str = "", extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.cache = tmp / f"worker-{name}"
        self.log = tmp / f"worker-{name}.log"
        argv = [*PBUILD, "worker", "--remote-executor", url, "--name", name, "--jobs", str(jobs),
                "--cache-dir", str(self.cache), "--grace", str(grace_s), *extra]
        if instance_name:
            argv += ["--remote-instance-name", instance_name]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                         env=base_env(tmp), start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lease_lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if " lease " in line and " action " in line]

    def wait_for(self, needle: str, timeout_s: float = 30) -> str:
        """The first log line containing ``needle``; fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.text().splitlines():
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"worker {self.name} never logged {needle!r}:\n{self.text()}")

    def busy(self) -> bool:
        """Whether a sandbox runs under this worker (a child process of one of its threads)."""
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return False
        for tid in tasks:
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/children") as f:
                    if f.read().strip():
                        return True
            except OSError:
                continue
        return False

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def workers(tmp: Path, url: str, names: tuple[str, ...], **kwargs: object) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(tmp, url, name, **kwargs) for name in names]  # type: ignore[arg-type]
    try:
        for w in started:
            w.wait_for(" session ")
        yield started
    finally:
        for w in started:
            w.stop()


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
