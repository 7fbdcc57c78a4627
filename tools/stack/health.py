"""Healthchecks: the ``test`` argv run inside a service's container, and what its results mean.

A check is ``pbuild exec`` done by the supervisor: a forked child joins the container's
namespaces with the launcher's own exec (:func:`pbuild.tools.launcher.lifecycle.exec_in`: the
container's user, environment, capabilities and syscall filter), its output going to a pipe.
A check still running after ``timeout`` is killed and counts as a failure. The supervisor is
single-threaded (an asyncio loop), so forking it is safe.

:class:`HealthState` is Docker's rule: ``starting`` until the first success (``healthy``);
``unhealthy`` after ``retries`` failures in a row, where failures during ``start_period`` do
not count; a success makes it ``healthy`` again.

While a service is ``starting`` it is probed sooner, as Docker's ``start_interval`` does: first
after :data:`FIRST_PROBE_S`, the wait doubling up to :data:`STARTING_PROBE_S` (or ``interval``, if
shorter), so that ``up`` and a ``service_healthy`` dependent go on as soon as the service is
healthy, not at the next interval, while a slow starter is not probed in a tight loop. Only one failure
per ``interval`` counts, so ``retries`` failures still take ``retries`` intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, replace
from typing import NamedTuple

from pbuild.tools.stack.spec import Healthcheck

OUTPUT_LIMIT = 4096  # Docker keeps this much of a check's output
STARTING_PROBE_S = 0.25
FIRST_PROBE_S = 0.05


@dataclass(frozen=True)
class HealthState:
    status: str = "starting"  # starting | healthy | unhealthy
    failures: int = 0
    last_output: str = ""

    def after(self, check: Healthcheck, result: CheckResult, since_start: float, counts: bool = True) -> HealthState:
        """The state once ``result`` came in, ``since_start`` seconds after the container
        started; a failure with ``counts`` false (an early probe) only records its output."""
        output = result.output[-OUTPUT_LIMIT:]
        if result.code == 0:
            return HealthState("healthy", 0, output)
        if not counts or (since_start < check.start_period_s and self.status != "healthy"):
            return replace(self, last_output=output)
        failures = self.failures + 1
        status = "unhealthy" if failures >= check.retries else self.status
        return HealthState(status, failures, output)


def next_probe(check: Healthcheck, state: HealthState, probes: int = 0) -> float:
    """Seconds until the next probe, after ``probes`` probes: sooner while the service is still
    starting."""
    if state.status != "starting":
        return check.interval_s
    return min(check.interval_s, STARTING_PROBE_S, FIRST_PROBE_S * 2.0 ** min(probes, 8))


class CheckResult(NamedTuple):
    code: int  # the test's exit code; -1 when it timed out
    output: str


async def run_check(store_root: str, container: str, check: Healthcheck) -> CheckResult:
    """Run ``check.test`` in ``container`` (a name of the launcher's store at ``store_root``)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in _exit
        code = 125
        try:
            code = _child(store_root, container, list(check.test), out_w)
        finally:
            os._exit(code)
    os.close(out_w)
    loop = asyncio.get_running_loop()
    output = bytearray()
    done: asyncio.Future[None] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def on_output() -> None:
        try:
            data = os.read(out_r, 65536)
        except BlockingIOError:
            return
        if data:
            output.extend(data)
            del output[: max(0, len(output) - OUTPUT_LIMIT)]
        else:
            loop.remove_reader(out_r)

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        if not done.done():
            done.set_result(None)

    os.set_blocking(out_r, False)
    loop.add_reader(out_r, on_output)
    loop.add_reader(pidfd, on_exit)
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(done), check.timeout_s)
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        await done
    finally:
        with contextlib.suppress(ValueError, KeyError):
            loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            on_output()  # what is left in the pipe
        with contextlib.suppress(ValueError, KeyError):
            loop.remove_reader(out_r)
        os.close(out_r)
    text = output.decode(errors="replace")
    if timed_out:
        return CheckResult(-1, f"{text}(timed out after {check.timeout_s:g}s)")
    code = os.waitstatus_to_exitcode(status)
    return CheckResult(128 - code if code < 0 else code, text)


def _child(store_root: str, container: str, argv: list[str], out_w: int) -> int:  # pragma: no cover
    """The forked check: stdio on the pipe, the supervisor's signal handling undone, then exec."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    from pbuild.tools.launcher.errors import LauncherError
    from pbuild.tools.launcher.lifecycle import exec_in
    from pbuild.tools.launcher.state import ContainerStore

    try:
        return exec_in(ContainerStore(store_root), container, argv, interactive=False, tty=False)
    except LauncherError as e:
        os.write(2, (e.render() + "\n").encode())
        return e.exit_code
