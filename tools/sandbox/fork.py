"""The fork backend: the calling process forks and the child sets up the namespaces itself with
ctypes syscalls (``linux.py``) and the plan's operations (``nsops.apply``) before exec'ing the
action: no dependency, the same plan as bwrap's. Its cost is the kernel copying and then tearing
down a large Python address space three times per action (A, B, the action), plus the page
faults Python's reference counting causes in each copy: measured ~1,200 minor faults per action
against ~100 for bwrap. (A helper that is a new Python process would cost 10-20 ms of
interpreter start alone.)

Process tree: ``caller -> A -> B -> action``. The engine calls this from many threads at once,
so the children do as little as they can: everything is planned and every file opened *before*
the fork; A first closes the fds it does not own (a concurrent fork in another thread must not
keep our pipe open). A unshares the namespaces and writes a single-id uid/gid map (the caller
becomes root in the namespace, which works unprivileged); B is PID 1 of the new PID namespace,
builds the mount tree through one checked interpreter (``nsops.apply``), pivots into it and forks
the action, staying as a small init (signals, orphans, exit status). Both die with their parent
(``PR_SET_PDEATHSIG``), and when B dies the kernel kills everything else in the namespace, so
killing A, by a timeout or a Ctrl-C of the engine, takes the whole action tree down.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Mapping
from typing import NoReturn

from pbuild.tools.sandbox import linux, nsops
from pbuild.tools.sandbox.plan import Plan, plan
from pbuild.tools.sandbox.request import (
    DEFAULT_PATH,
    SETUP_FAILED,
    SandboxRequest,
    SandboxRequestError,
    SandboxResult,
    not_found_message,
)


def _find_executable(name: str, env: Mapping[str, str]) -> str | None:
    if "/" in name:
        return name
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _report(errpipe: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(errpipe, message.encode(errors="replace"))


def _child_a(p: Plan, env: Mapping[str, str], fds: tuple[int, int, int], errpipe: int, parent: int) -> int:
    """First child: new namespaces and id maps, then fork the action (PID 1 of the new pid ns)."""
    uid, gid = os.geteuid(), os.getegid()
    linux.keep_only_fds([*fds, errpipe])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        interrupt = sig in (signal.SIGINT, signal.SIGQUIT)
        signal.signal(sig, signal.SIG_IGN if p.interactive and interrupt else signal.SIG_DFL)
    try:
        linux.unshare(p.namespaces)
        # Credentials changed with the new user namespace, which clears the death signal: set
        # it now, then make sure the parent did not die before it took effect.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return SETUP_FAILED
        uid_map, gid_map = p.id_maps or (f"0 {uid} 1\n", f"0 {gid} 1\n")
        linux.write_id_maps("self", uid_map, gid_map)
        child = os.fork()
    except OSError as e:
        _report(errpipe, f"sandbox setup failed: {e}")
        return SETUP_FAILED
    if child == 0:
        os._exit(_child_b(p, env, fds, errpipe))
    for fd in {errpipe, *fds}:  # stdout and stderr may share one fd
        os.close(fd)
    try:
        _, status = os.waitpid(child, 0)
    except BaseException:
        os.kill(child, signal.SIGKILL)
        return 128 + signal.SIGKILL
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _child_b(p: Plan, env: Mapping[str, str], fds: tuple[int, int, int], errpipe: int) -> int:
    """PID 1 of the sandbox: mounts and pivot_root, then a small init around the action.

    The action must not be PID 1 itself: the kernel drops signals a namespace's init has no
    handler for, so `kill -9 $$` or `abort()` in a build command would be survived. B forks it,
    forwards SIGINT/SIGTERM/SIGHUP, reaps orphans, and exits with its status (128+N for signal N).
    """
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 0 and os.getpid() != 1:  # pragma: no cover - not in our PID namespace
            return SETUP_FAILED
        nsops.apply(p.ops)
        try:
            os.chdir(p.workdir)
        except OSError as e:
            raise linux.LinuxError(e.errno or 0, f"chdir({p.workdir})") from None
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        action = os.fork()
    except OSError as e:
        _report(errpipe, f"sandbox setup failed: {e}")
        return SETUP_FAILED
    if action == 0:
        os._exit(_exec_action(p, env, fds))
    for fd in {errpipe, *fds}:
        os.close(fd)
    for sig in (
        (signal.SIGTERM, signal.SIGHUP) if p.interactive else (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    ):
        signal.signal(sig, lambda signum, _frame: os.kill(action, signum))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the action is our child until reaped
            return SETUP_FAILED
        if pid == action:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _exec_action(p: Plan, env: Mapping[str, str], fds: tuple[int, int, int]) -> int:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)  # ignored signals would survive exec
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if not p.interactive:
        os.umask(0o022)  # the caller's umask must not reach output modes
    linux.close_range(3, cloexec=True)
    path = _find_executable(p.argv[0], env)
    if path is None:
        os.write(2, not_found_message(p.argv[0], on_toolchain=p.on_toolchain).encode())
        return 127
    try:
        os.execve(path, list(p.argv), {**env, "PWD": env.get("PWD", p.workdir)})
    except OSError as e:
        os.write(2, f"pbuild-sandbox: cannot execute {path}: {e.strerror}\n".encode())
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 126  # pragma: no cover - execve does not return


def _open_output(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def run_forked(request: SandboxRequest) -> SandboxResult:
    """Run ``request`` with the fork backend and wait for it; safe to call from many threads."""
    start = time.perf_counter()
    try:
        p = plan(request)
    except (SandboxRequestError, OSError) as e:
        return SandboxResult(
            SETUP_FAILED, time.perf_counter() - start, error=f"sandbox request refused: {e}"
        )
    env = dict(request.env)
    opened: list[int] = []
    try:
        stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        opened.append(stdin)
        stdout = _open_output(request.stdout_path)
        opened.append(stdout)
        if request.stderr_path == request.stdout_path:
            stderr = stdout
        else:
            stderr = _open_output(request.stderr_path)
            opened.append(stderr)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        opened += [read_end, write_end]
    except OSError as e:
        for fd in opened:
            os.close(fd)
        return SandboxResult(SETUP_FAILED, time.perf_counter() - start, error=f"sandbox: {e}")
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child A: never returns into the caller's code
        code = SETUP_FAILED
        try:
            code = _child_a(p, env, (stdin, stdout, stderr), write_end, parent)
        except BaseException as e:  # noqa: BLE001 - anything here must end in _exit
            _report(write_end, f"sandbox setup failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    for fd in opened:
        if fd != read_end:
            os.close(fd)
    if request.on_start is not None:
        request.on_start(pid)
    return _wait(pid, read_end, request.timeout_s, start)


def _wait(pid: int, errpipe: int, timeout_s: float | None, start: float) -> SandboxResult:
    pidfd = os.pidfd_open(pid)
    timed_out = False
    try:
        chunks = []
        with os.fdopen(errpipe, "rb") as errors:
            chunks.append(errors.read())  # EOF once the action exec'd or the setup failed
        message = b"".join(chunks).decode(errors="replace") or None
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = None if timeout_s is None else start + timeout_s
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.perf_counter()) * 1000))
            if poller.poll(wait_ms):
                break
            if deadline is not None and time.perf_counter() >= deadline:
                timed_out = True
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                break
    except BaseException:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code
    duration = time.perf_counter() - start
    if timed_out:
        return SandboxResult(code, duration, error=None, timed_out=True)
    return SandboxResult(code, duration, error=message)


def exec_forked(p: Plan, env: Mapping[str, str], root: str) -> NoReturn:
    """Run the interactive plan ``p`` (``exec_on_root``) and exit with its program's status:
    this process stays as a thin waiter around the same namespace setup as an action's."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # the terminal's go to the program; we wait for it
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = SETUP_FAILED
        try:
            code = _child_a(p, env, (0, 1, 2), write_end, parent)
        except BaseException as e:  # noqa: BLE001 - anything here must end in _exit
            _report(write_end, f"sandbox setup failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as errors:
        message = errors.read().decode(errors="replace")  # EOF once the program exec'd
    _, status = os.waitpid(pid, 0)
    if message:
        os.write(2, f"pbuild: cannot run {p.argv[0]} on {root}: {message}\n".encode())
        os._exit(SETUP_FAILED)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)
