"""``up``, ``down``, ``ps`` and ``logs`` of a stack, as the command line calls them.

``up`` starts the stack's supervisor when none is alive (under the stacks lock, so two ``up``
never start two) and hands it the resolved spec; ``down`` asks the supervisor, or cleans up
after it from the records when it is gone. ``ps`` and ``logs`` read the records and log files
and need no supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

from pbuild.tools.launcher.state import ContainerStore, is_alive
from pbuild.tools.stack import control, logs, state, teardown
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.spec import StackSpec
from pbuild.tools.stack.state import StackRecord

EXIT_FAILED = 1
_READY_TIMEOUT_S = 15.0
_ATTEMPTS = 3

Out = Callable[[str], None]


def _progress(text: str) -> None:
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def up(spec: StackSpec, *, detach: bool, out: Out = _progress, spare: Spare | None = None) -> int:
    """Bring ``spec`` (resolved) up; without ``detach`` follow the logs until Ctrl-C, then down.
    ``spare``: a supervisor started ahead (:class:`Spare`), used if the stack needs one."""
    try:
        return _up(spec, detach=detach, out=out, spare=spare)
    finally:
        if spare is not None:
            spare.close()


def _up(spec: StackSpec, *, detach: bool, out: Out, spare: Spare | None) -> int:
    from pbuild.tools.stack.spec import to_json

    directory = state.stack_dir(spec.name)
    log_offsets = _log_sizes(directory)
    message = {"op": "up", "spec": to_json(spec).decode(), "detach": detach}
    for attempt in range(_ATTEMPTS):
        _ensure_supervisor(directory, spec, spare)
        spare = None  # taken, or not needed
        try:
            done = control.request(directory, message, out)
            if not done.get("retry") or attempt == _ATTEMPTS - 1:
                break
            _wait_gone_dir(directory)  # a down ended that supervisor just now: start anew
        except KeyboardInterrupt:  # the supervisor sees us go and stops what this up started
            _progress("Interrupted: what this up started is stopped again")
            return 130
        except OSError:  # it ended between our check and our request (a down): start anew
            if attempt == _ATTEMPTS - 1:
                raise StackError(f"the supervisor of stack {spec.name} does not answer",
                                 hint=f"see {os.path.join(directory, 'supervisor.log')}") from None  # fmt: skip
    control.raise_failure(done)
    if detach:
        return 0
    return _attach(directory, spec, log_offsets)


def _attach(directory: str, spec: StackSpec, offsets: dict[str, int]) -> int:
    """``up`` without ``-d``: the services' logs until Ctrl-C (or the stack's end), then down."""
    services = [s.name for s in spec.services]
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    def alive() -> bool:
        """Follow while a service runs (or will again): as Compose's up, stop when all ended."""
        record = state.load(directory)
        return (
            record is not None
            and state.supervisor_alive(record)
            and any(s.status in ("running", "restarting") for s in record.services)
        )

    try:
        logs.show(os.path.join(directory, state.LOG_DIR), services, follow=True, keep_following=alive,
                  write=write, offsets=offsets)  # fmt: skip
    except KeyboardInterrupt:
        _progress("Gracefully stopping... (press Ctrl-C again to force)")
        try:
            return down(directory, timeout=10.0, volumes=False)
        except KeyboardInterrupt:
            return down(directory, timeout=0.0, volumes=False)
    return 0


def _log_sizes(directory: str) -> dict[str, int]:
    sizes = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(os.path.join(directory, state.LOG_DIR)):
            if name.endswith(".log"):
                sizes[name[: -len(".log")]] = os.stat(os.path.join(directory, state.LOG_DIR, name)).st_size
    return sizes


def _ensure_supervisor(directory: str, spec: StackSpec, spare: Spare | None) -> None:
    """A live supervisor for the stack: the one running, or a new one."""
    with state.locked():
        record = state.load(directory)
        if record is not None and record.origin != spec.origin:
            raise StackError(
                f"the stack name {spec.name!r} is used by {record.origin}",
                hint=f"`pbuild down {record.origin}` first, or give this stack another name "
                "(project_name in the stack target, name: in a Compose file)",
                exit_code=2,
            )
        if record is not None and state.supervisor_alive(record):
            if spare is not None:
                spare.close()  # not needed: it ends now, not when this up does
            return
        if record is not None or os.path.lexists(directory):
            # A supervisor that died left its services unwatched: clean up, start afresh.
            _progress(f"The supervisor of stack {spec.name} is gone; removing what it left")
            teardown.remove_stack(directory, record or StackRecord(spec.name, spec.origin), timeout=10.0,
                                  volumes=None, say=_progress)  # fmt: skip
        state.ensure_private(state.stacks_root())
        os.mkdir(directory, 0o700)
        (spare or Spare()).take(directory, spec)


class Spare:
    """A supervisor process started ahead (``up`` starts one before it builds, so that the
    interpreter's start and its imports overlap the build), then given a stack or sent away.

    It waits for one line on its stdin: the stack's folder, name and origin (as JSON); EOF
    (we closed the pipe, or died) ends it. Once it listens it writes ``ok`` to its ready pipe.
    """

    def __init__(self) -> None:
        import pbuild

        env = dict(os.environ)
        # The supervisor imports pbuild as we do, wherever that came from (a venv, a source tree).
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(p) for p in pbuild.__path__] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        self.ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        argv = [sys.executable, "-m", "pbuild.tools.stack.supervisor", str(ready_w)]
        try:
            # The binary that runs us (a venv's python may be a link into a folder this user
            # cannot search, as when root's interpreter runs under setpriv); argv[0] still
            # names the venv. The process we start forks the supervisor and exits at once.
            starter = subprocess.Popen(argv, executable="/proc/self/exe", env=env, pass_fds=(ready_w,),
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True, cwd="/")  # fmt: skip
        finally:
            os.close(ready_w)
        assert starter.stdin is not None
        self.stdin = starter.stdin
        self.starter = starter  # reaped in close(): waiting here would undo the overlap


    def take(self, directory: str, spec: StackSpec) -> None:
        """Become the supervisor of ``spec``'s stack in ``directory``; return once it listens."""
        try:
            self.stdin.write(json.dumps({"dir": directory, "name": spec.name, "origin": spec.origin}).encode() + b"\n")
            self.stdin.close()
        except OSError:
            pass  # it died: its ready pipe says so
        line = b""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            readable, _, _ = select.select([self.ready_r], [], [], max(0.0, deadline - time.monotonic()))
            data = os.read(self.ready_r, 256) if readable else b""
            if not data:
                break
            line += data
        self.close()
        if line.strip() != b"ok":
            said = line.decode(errors="replace").strip().removeprefix("E ") or "it exited without a word"
            raise StackError(f"cannot start the supervisor of stack {spec.name}: {said}",
                             hint=f"see {os.path.join(directory, 'supervisor.log')}")  # fmt: skip

    def close(self) -> None:
        """Send it away (when the stack has a supervisor already, or up failed before)."""
        with contextlib.suppress(OSError):
            self.stdin.close()
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        self.starter.wait()  # it forks the supervisor once its imports are done, then exits


def down(directory: str, *, timeout: float, volumes: bool, out: Out = _progress) -> int:
    """Stop and remove the stack in ``directory``: through its supervisor, or from its records."""
    with state.locked():
        record = state.load(directory)
        if record is None:
            if os.path.lexists(directory):  # a supervisor that died before its first record
                teardown.remove_stack(directory, StackRecord(os.path.basename(directory), ""), timeout=timeout,
                                      volumes=None, say=out)  # fmt: skip
            return 0
        if state.supervisor_alive(record):
            try:
                done = control.request(directory, {"op": "down", "timeout": timeout, "volumes": volumes}, out,
                                       timeout=timeout + 60)  # fmt: skip
                control.raise_failure(done)
                _wait_gone(record)
                return 0
            except OSError:
                out(f"The supervisor of stack {record.name} does not answer; cleaning up without it")
                teardown.kill_supervisor(record)
        named = teardown.volumes_of(directory) if volumes else None
        teardown.remove_stack(directory, record, timeout=timeout, volumes=named, say=out)
    return 0


def _wait_gone_dir(directory: str) -> None:
    record = state.load(directory)
    if record is not None:
        _wait_gone(record)


def _wait_gone(record: StackRecord) -> None:
    """``down`` returns when the supervisor has exited too: nothing of the stack is left."""
    deadline = time.monotonic() + 10
    while state.supervisor_alive(record) and time.monotonic() < deadline:
        time.sleep(0.01)
    if state.supervisor_alive(record):
        teardown.kill_supervisor(record)


def find(origin: str) -> tuple[str, StackRecord] | None:
    """The stack ``origin`` (a canonical label, a Compose file's absolute path) brought up."""
    return state.find_by_origin(origin)


def ps(record: StackRecord, out: Out) -> int:
    """Compose's ``ps``: one row per service container."""
    store = ContainerStore()
    rows = [("NAME", "SERVICE", "STATE", "HEALTH", "PORTS")]
    supervised = state.supervisor_alive(record)
    for service in record.services:
        container = store.load(service.container_id) if service.container_id else None
        if supervised and service.status == "restarting":
            status = "restarting"
        elif container is not None and is_alive(container):
            status = "running"
        elif container is not None and container.exit_code is not None and container.status == "exited":
            status = f"exited ({container.exit_code})"
        elif service.exit_code is not None:
            status = f"exited ({service.exit_code})"
        else:
            status = "created"
        health = service.health if supervised and status == "running" else ""
        ports = ", ".join(service.ports) if status == "running" else ""
        rows.append((service.container_name, service.name, status, health, ports))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not supervised:
        out(f"(the supervisor of stack {record.name} is not running: `pbuild down` cleans up)")
    return 0


def show_logs(directory: str, record: StackRecord, services: list[str], *, follow: bool) -> int:
    """``logs``: the services' lines interleaved by time, each with its service's name."""
    known = [s.name for s in record.services]
    unknown = [s for s in services if s not in known]
    if unknown:
        raise StackError(
            f"stack {record.name} has no service {', '.join(unknown)}",
            hint=f"its services: {', '.join(known)}",
            exit_code=2,
        )
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    def alive() -> bool:
        current = state.load(directory)
        return current is not None and state.supervisor_alive(current)

    with contextlib.suppress(KeyboardInterrupt):
        logs.show(os.path.join(directory, state.LOG_DIR), services or known, follow=follow,
                  keep_following=alive, write=write)  # fmt: skip
    return 0
