"""Stacks in tests: a driver that calls ``pbuild.tools.stack.client`` as the CLI does, run as root
or as uid 65534, busybox services that stop on SIGTERM, and the cleanup after a test (every
supervisor, container and network holder a stack left, found from its records)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.launcher import kill_leftovers
from tests.support.launcher_users import LauncherUser

DRIVER = r"""
import sys
from pbuild.lib.errors import UserError
from pbuild.tools.stack import client, state
from pbuild.tools.stack.spec import from_json

op, arg, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    if op == "up":
        with open(arg, "rb") as f:
            spec = from_json(f.read())
        sys.exit(client.up(spec, detach="-d" in rest))
    directory = state.stack_dir(arg)
    if op == "down":
        sys.exit(client.down(directory, timeout=float(rest[0]), volumes="-v" in rest))
    record = state.load(directory)
    if record is None:
        print(f"stack {arg} is not running")
        sys.exit(0)
    if op == "ps":
        sys.exit(client.ps(record, print))
    if op in ("logs", "logs-f"):
        sys.exit(client.show_logs(directory, record, rest, follow=op == "logs-f"))
except UserError as e:
    print(e.render(), file=sys.stderr)
    sys.exit(e.exit_code)
"""


def driver(user: LauncherUser, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``up SPEC_FILE [-d]``, ``down NAME SECONDS [-v]``, ``ps NAME``, ``logs[-f] NAME [SERVICE...]``."""
    return subprocess.run(
        [*user.prefix(), sys.executable, "-c", DRIVER, *args], env=user.env, cwd=user.base,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def driver_popen(user: LauncherUser, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*user.prefix(), sys.executable, "-c", DRIVER, *args], env=user.env, cwd=user.base,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def serving(text: str, port: int = 8080, then: str = "") -> tuple[str, ...]:
    """A busybox web server on ``port`` answering ``text``, that exits 0 on SIGTERM (a PID 1
    without a handler would ignore it and wait for SIGKILL)."""
    script = (
        f"trap 'exit 0' TERM; mkdir -p /www; echo {text} > /www/index.html; {then}"
        f"httpd -f -p {port} -h /www & wait"
    )
    return ("sh", "-c", script)


def record_of(runtime: Path, name: str) -> dict:
    return json.loads((runtime / "stacks" / name / "stack.json").read_text())


def stack_pids(runtime: Path) -> list[int]:
    """Every live process a stack recorded: supervisors, network holders, container inits."""
    from pbuild.tools.launcher.state import ContainerState, process_running

    pids = []
    for path in runtime.glob("stacks/*/stack.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(path.read_text())
            if process_running(data["supervisor_pid"], data["supervisor_start"]):
                pids.append(data["supervisor_pid"])
    for path in runtime.glob("stacks/*/network.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(path.read_text())
            if process_running(data["holder_pid"], data["holder_start"]):
                pids.append(data["holder_pid"])
    for path in runtime.glob("containers/*/state.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = ContainerState.from_json(path.read_text())
            if state.pid and process_running(state.pid, state.pid_start):
                pids.append(state.pid)
    return pids


def kill_stacks(runtime: Path) -> None:
    """After a test: SIGKILL whatever its stacks left running."""
    for pid in stack_pids(runtime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_leftovers(runtime)
