"""Start a container: fork, new namespaces, id maps, mounts, then exec the entrypoint.

Process tree and why:

    launcher (L) --fork--> monitor (A) --fork--> init (B, PID 1 of the new PID namespace)

- L must not enter any namespace: the engine calls the launcher in-process.
- A unshares the user, mount, PID, IPC, UTS (and network) namespaces in one call, then waits
  while L writes its uid/gid maps (only a process in the parent namespace may write a map with
  more than the caller's own id, and newuidmap needs the pid). A then forks B, the first process
  of the new PID namespace, records it in the state file (pid and start time), waits for it and
  records how it ended. A stays outside the PID namespace so a killed container still gets
  its exit recorded; it ignores the terminal's signals, and dies with L (``PR_SET_PDEATHSIG``)
  unless the container is detached.
- B builds the mount tree (``mounts.plan_container``, applied by ``nsops.apply``), pivots into
  it, becomes the requested user with Docker's capability set, no_new_privs, umask 022, fds
  >= 3 closed, and execs the command (or, with ``--init``, forks it and reaps zombies,
  forwarding signals). B starts a new session so that a terminal's Ctrl-C reaches the container
  only through L, which forwards SIGINT, SIGTERM and SIGHUP to B.

Errors in A and B go back to L through a close-on-exec pipe as ``CODE MESSAGE``: EOF without a
message means the command was exec'd. 125 is a setup failure, 126 a command that cannot be
executed, 127 a command that does not exist.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pbuild.tools import linux, nsops
from pbuild.tools.launcher import identity
from pbuild.tools.launcher.errors import EXIT_CANNOT_EXECUTE, EXIT_LAUNCHER, EXIT_NOT_FOUND, LauncherError
from pbuild.tools.launcher.state import ContainerState, Store, process_start_time

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_NOFILE = 1048576


@dataclass(frozen=True)
class ProcessSetup:
    """How the command is started once the filesystem is in place (shared by run and exec)."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    tty: bool
    single_map: bool


@dataclass(frozen=True)
class Stdio:
    """The container's fds 0, 1, 2 as fds of the launcher, and the pty master when ``-t``."""

    stdin: int
    stdout: int
    stderr: int
    pty_master: int | None = None
    owned: tuple[int, ...] = ()
    """fds opened for this container (closed by the launcher after the fork)."""


def report(errpipe: int, code: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(errpipe, f"{code} {message}".encode(errors="replace"))


def read_report(fd: int) -> tuple[int, str] | None:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    if not chunks:
        return None
    code, _, message = b"".join(chunks).decode(errors="replace").partition(" ")
    return (int(code) if code.isdigit() else EXIT_LAUNCHER), message


def keep_only_fds(keep: list[int]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            if fd > low:
                linux.close_range(low, fd - 1)
            low = fd + 1
    linux.close_range(low)


def _find_executable(name: str, env: dict[str, str]) -> str | None:
    if "/" in name:
        return name if os.path.exists(name) else None
    for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def become_and_exec(setup: ProcessSetup, stdio: tuple[int, int, int], errpipe: int, timing_fd: int = -1) -> int:
    """Inside the container's root: switch to the user, drop privileges, exec. Returns (as an
    exit code for ``os._exit``) only when something failed, after reporting it."""
    env = dict(item.partition("=")[::2] for item in setup.env)
    try:
        try:
            os.chdir(setup.workdir)
        except OSError as e:
            raise LauncherError(f"cannot enter the working directory {setup.workdir}: {e.strerror}") from None
        if not os.getcwd().startswith("/"):  # "(unreachable)/...": outside the root
            raise LauncherError(f"the working directory {setup.workdir} lies outside the container's root")
        user = identity.resolve_user(setup.user)
        env.setdefault("HOME", user.home or "/")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = min(_NOFILE, hard) if hard != resource.RLIM_INFINITY else _NOFILE
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        os.umask(0o022)
        linux.drop_bounding_set(identity.DEFAULT_CAP_MASK, linux.last_cap())
        linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
        try:
            if not setup.single_map:
                os.setgroups(list(user.groups))
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
        except OSError as e:
            hint = ""
            if setup.single_map and (user.uid or user.gid):
                hint = " (only root is mapped in this user namespace: run as root, or give the caller a range in /etc/subuid and /etc/subgid)"
            raise LauncherError(f"cannot become user {setup.user} (uid {user.uid}, gid {user.gid}): {e.strerror}{hint}") from None
        if user.uid == 0:
            linux.capset(identity.DEFAULT_CAP_MASK, identity.DEFAULT_CAP_MASK, 0)
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except LauncherError as e:
        report(errpipe, e.exit_code, e.message)
        return e.exit_code
    except OSError as e:
        report(errpipe, EXIT_LAUNCHER, f"container setup failed: {e}")
        return EXIT_LAUNCHER
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
    if setup.tty:
        import fcntl
        import termios

        with contextlib.suppress(OSError):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for sig in (*_FORWARDED, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGWINCH):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    linux.close_range(3, cloexec=True)
    path = _find_executable(setup.argv[0], env)
    if path is None:
        report(errpipe, EXIT_NOT_FOUND, f"{setup.argv[0]}: executable file not found in $PATH")
        return EXIT_NOT_FOUND
    if timing_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(timing_fd, f"{time.perf_counter()}\n".encode())
    try:
        os.execve(path, list(setup.argv), env)
    except OSError as e:
        code = EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else EXIT_CANNOT_EXECUTE
        report(errpipe, code, f"cannot execute {path}: {e.strerror}")
        return code
    return EXIT_CANNOT_EXECUTE  # pragma: no cover - execve does not return


def exit_code_of(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap_as_init(child: int) -> int:
    """``--init``: forward signals to ``child``, reap every orphan, exit with ``child``'s code."""
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_LAUNCHER
        if pid == child:
            return exit_code_of(status)


@dataclass(frozen=True)
class Launch:
    """Everything the forked children need, computed before the fork."""

    ops: tuple[nsops.Op, ...]
    setup: ProcessSetup
    namespaces: int
    init: bool
    detached: bool
    state: ContainerState
    store_root: str


def _monitor(
    launch: Launch, stdio: Stdio, pipes: tuple[int, int, int], parent: int, timing_fd: int
) -> int:
    """Process A: see the module docstring."""
    ready_w, go_r, errpipe = pipes
    fds = (stdio.stdin, stdio.stdout, stdio.stderr)
    keep_only_fds([*fds, *pipes, timing_fd])
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # L forwards what is meant for the container
    if launch.detached:
        os.setsid()
    try:
        linux.unshare(launch.namespaces)
        if not launch.detached:
            # The new user namespace changed our credentials, which clears the death signal.
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                return EXIT_LAUNCHER
    except OSError as e:
        report(errpipe, EXIT_LAUNCHER, f"cannot create the container's namespaces: {e}")
        return EXIT_LAUNCHER
    os.write(ready_w, b"u")
    if os.read(go_r, 1) != b"g":
        return EXIT_LAUNCHER  # L could not write the id maps and said why
    os.close(go_r)
    child = os.fork()
    if child == 0:
        code = EXIT_LAUNCHER
        try:
            code = _container_init(launch, fds, errpipe, timing_fd)
        except BaseException as e:  # noqa: BLE001 - must end in _exit
            report(errpipe, EXIT_LAUNCHER, f"container setup failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    store = Store(launch.store_root)
    state = replace(launch.state, status="running", pid=child, pid_start=process_start_time(child) or 0)
    store.save(state)
    os.write(ready_w, f"{child}\n".encode())
    for fd in {ready_w, errpipe, *fds}:
        if fd > 2:
            os.close(fd)
    if timing_fd >= 0:
        os.close(timing_fd)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = exit_code_of(status)
    state = replace(state, status="exited", exit_code=code, finished=time.time())
    if launch.state.auto_remove:
        from pbuild.tools.launcher.lifecycle import remove_container

        remove_container(store, state)
    else:
        store.save(state)
    return code


def _container_init(launch: Launch, fds: tuple[int, int, int], errpipe: int, timing_fd: int) -> int:
    """Process B: PID 1 of the container."""
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        nsops.apply(launch.ops)
    except OSError as e:
        report(errpipe, EXIT_LAUNCHER, f"container setup failed: {e}")
        return EXIT_LAUNCHER
    if not launch.init:
        return become_and_exec(launch.setup, fds, errpipe, timing_fd)
    child = os.fork()
    if child == 0:
        os._exit(become_and_exec(launch.setup, fds, errpipe, timing_fd))
    os.close(errpipe)
    return reap_as_init(child)


def write_id_maps(pid: int, idmap: identity.IdMap) -> None:
    """From the parent namespace: the maps of the user namespace process ``pid`` created."""
    try:
        if idmap.helper:
            for tool, mapping in (("newuidmap", idmap.uid_map), ("newgidmap", idmap.gid_map)):
                subprocess.run([tool, str(pid), *mapping.split()], check=True, capture_output=True, text=True)
        else:
            linux.write_id_maps(str(pid), idmap.uid_map, idmap.gid_map, deny_setgroups=idmap.single)
    except subprocess.CalledProcessError as e:
        raise LauncherError(f"{e.cmd[0]} failed: {e.stderr.strip()}") from None
    except OSError as e:
        raise LauncherError(f"cannot write the user namespace id maps: {e}") from None


def start(
    launch: Launch, stdio: Stdio, idmap: identity.IdMap, timing_fd: int = -1
) -> tuple[int, int, tuple[int, str] | None]:
    """Fork the monitor and the container; return (monitor pid, container init pid, error).

    On return the command was exec'd, or ``error`` says why not (and the children are exiting).
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    monitor = os.fork()
    if monitor == 0:
        code = EXIT_LAUNCHER
        try:
            code = _monitor(launch, stdio, (ready_w, go_r, err_w), parent, timing_fd)
        except BaseException as e:  # noqa: BLE001 - must end in _exit
            report(err_w, EXIT_LAUNCHER, f"container monitor failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    for fd in (ready_w, go_r, err_w, *stdio.owned):
        os.close(fd)
    init_pid = 0
    try:
        if os.read(ready_r, 1) == b"u":
            try:
                write_id_maps(monitor, idmap)
                os.write(go_w, b"g")
            except LauncherError as e:
                os.close(go_w)
                go_w = -1
                return monitor, 0, (e.exit_code, e.message)
            line = b""
            while not line.endswith(b"\n"):
                data = os.read(ready_r, 32)
                if not data:
                    break
                line += data
            init_pid = int(line) if line.strip().isdigit() else 0
        return monitor, init_pid, read_report(err_r)
    finally:
        os.close(ready_r)
        if go_w >= 0:
            os.close(go_w)


def wait_monitor(monitor: int, init_pid: int, on_idle: Callable[[], None] | None = None) -> int:
    """Wait for the monitor, forwarding SIGINT/SIGTERM/SIGHUP/... to the container's init."""
    previous: dict[int, object] = {}

    def forward(signum: int, _frame: object) -> None:
        if init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signum)

    try:
        for sig in _FORWARDED:
            previous[sig] = signal.signal(sig, forward)
    except ValueError:
        pass  # not the main thread: the caller handles signals itself
    try:
        if on_idle is not None:
            on_idle()
        while True:
            try:
                _, status = os.waitpid(monitor, 0)
                return exit_code_of(status)
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def print_error(message: str) -> None:
    sys.stderr.write(f"pbuild: error: {message}\n")
    sys.stderr.flush()
