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
  it, becomes the requested user with Docker's capability set (as ``--cap-add`` and
  ``--cap-drop`` change it), no_new_privs, umask 022, fds >= 3 closed, loads the seccomp filter
  (``seccomp.py``) last, and execs the command (or, with ``--init``, forks it and reaps zombies,
  forwarding signals, under the same filter). B starts a new session so that a terminal's
  Ctrl-C reaches the container only through L, which forwards SIGINT, SIGTERM and SIGHUP to B.

Errors in A and B go back to L through a close-on-exec pipe as ``CODE MESSAGE``: EOF without a
message means the command was exec'd. 125 is a setup failure, 126 a command that cannot be
executed, 127 a command that does not exist.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pbuild.tools.launcher import identity, seccomp
from pbuild.tools.launcher.errors import EXIT_CANNOT_EXECUTE, EXIT_LAUNCHER, EXIT_NOT_FOUND, LauncherError
from pbuild.tools.launcher.state import ContainerState, ContainerStore, process_start_time
from pbuild.tools.sandbox import linux, nsops

if TYPE_CHECKING:
    from pbuild.tools.launcher.config import NetworkJoin
    from pbuild.tools.launcher.forward import Listener
    from pbuild.tools.launcher.join import Holder

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_NOFILE = 1048576
_MONITOR_NAMESPACES = linux.CLONE_NEWUSER | linux.CLONE_NEWPID | linux.CLONE_NEWNET


class ProcessSetup(NamedTuple):
    """How the command is started once the filesystem is in place (shared by run and exec)."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    tty: bool
    single_map: bool
    capabilities: int
    """The mask the container's root keeps (``identity.capability_mask``)."""
    seccomp: bytes
    """The syscall filter loaded just before exec (``seccomp.build_program``); empty: none."""


class Stdio(NamedTuple):
    """The container's fds 0, 1, 2 as fds of the launcher; with ``-t`` instead a socket over
    which the container sends the master of the pty it opens in its own devpts (so that
    ``tty`` and ``ttyname`` work inside), and the window size to give that pty."""

    stdin: int
    stdout: int
    stderr: int
    pty_socket: int = -1
    pty_parent: int = -1
    window: tuple[int, int] = (24, 80)
    owned: tuple[int, ...] = ()
    """fds opened for this container (closed by the launcher after the fork)."""

    @property
    def child_fds(self) -> list[int]:
        return [fd for fd in (self.stdin, self.stdout, self.stderr, self.pty_socket) if fd >= 0]


def _open_container_pty(stdio: Stdio) -> int:
    """Open a pty in the container's devpts, send its master to the launcher, return the slave."""
    import fcntl
    import socket
    import struct
    import termios

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, getattr(termios, "TIOCSPTLCK", 0x40045431), struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, getattr(termios, "TIOCGPTN", 0x80045430), b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", stdio.window[0], stdio.window[1], 0, 0))
    with socket.socket(fileno=os.dup(stdio.pty_socket)) as channel:
        socket.send_fds(channel, [b"m"], [master])
    os.close(master)
    return slave


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


def mark(timing_fd: int, label: str) -> None:
    """Record when a step happened (``PBUILD_LAUNCHER_TIMING``, used by bench/bench_launcher.py)."""
    if timing_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(timing_fd, f"{label} {time.perf_counter()}\n".encode())


def _find_executable(name: str, env: dict[str, str]) -> str | None:
    if "/" in name:
        return name if os.path.exists(name) else None
    for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def become_and_exec(setup: ProcessSetup, stdio: Stdio, errpipe: int, timing_fd: int = -1) -> int:
    """Inside the container's root: switch to the user, drop privileges, exec. Returns (as an
    exit code for ``os._exit``) only when something failed, after reporting it."""
    env = dict(item.partition("=")[::2] for item in setup.env)
    fds = (stdio.stdin, stdio.stdout, stdio.stderr)
    try:
        if stdio.pty_socket >= 0:
            try:
                slave = _open_container_pty(stdio)
            except OSError as e:
                raise LauncherError(f"cannot open a pseudo-terminal in the container: {e}") from None
            fds = (slave, slave, slave)
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
        last = linux.last_cap()
        capabilities = setup.capabilities & ((1 << (last + 1)) - 1)  # what this kernel has
        linux.drop_bounding_set(capabilities, last)
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
            raise LauncherError(
                f"cannot become user {setup.user} (uid {user.uid}, gid {user.gid}): {e.strerror}{hint}"
            ) from None
        if user.uid == 0:
            linux.capset(capabilities, capabilities, 0)
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except LauncherError as e:
        report(errpipe, e.exit_code, e.message)
        return e.exit_code
    except OSError as e:
        report(errpipe, EXIT_LAUNCHER, f"container setup failed: {e}")
        return EXIT_LAUNCHER
    for target, fd in enumerate(fds):
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
    try:
        # Last: the filter would refuse the mounts above, and it may refuse what the launcher
        # still does (it is the container's filter, not ours).
        seccomp.install(setup.seccomp)
    except OSError as e:
        report(errpipe, EXIT_LAUNCHER, f"cannot load the seccomp filter: {e}")
        return EXIT_LAUNCHER
    mark(timing_fd, "exec")
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


def forward_signals_to(child: int) -> None:
    """``--init``: pass the forwarded signals B receives on to ``child``."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)


def reap_as_init(child: int) -> int:
    """``--init``: reap every orphan, exit with ``child``'s code (signals forwarded already)."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_LAUNCHER
        if pid == child:
            return exit_code_of(status)


class Launch(NamedTuple):
    """Everything the forked children need, computed before the fork."""

    ops: tuple[nsops.Op, ...]
    setup: ProcessSetup
    namespaces: int
    init: bool
    detached: bool
    state: ContainerState
    store_root: str
    cgroups: tuple[str, ...] = ()
    slirp: bool = False
    publish: tuple[Any, ...] = ()
    """Ports for slirp4netns to forward (``--network slirp4netns``)."""
    join: NetworkJoin | None = None
    holder: Holder | None = None
    """With ``join``: the stack network holder's namespaces, opened (and checked) by L."""
    listeners: tuple[Listener, ...] = ()
    """With ``join``: the published ports, bound by L in the host's namespace, for A's forwarder."""


def _monitor(
    launch: Launch, stdio: Stdio, pipes: tuple[int, int, int], parent: int, timing_fd: int, net_exit: int
) -> int:
    """Process A: see the module docstring. ``net_exit`` stays open until A exits: it tells
    slirp4netns when to end."""
    ready_w, go_r, errpipe = pipes
    fds = stdio.child_fds
    holder_fds = [launch.holder.user_fd, launch.holder.net_fd] if launch.holder is not None else []
    listener_fds = [listener.sock.fileno() for listener in launch.listeners]
    linux.keep_only_fds([*fds, *pipes, timing_fd, net_exit, *holder_fds, *listener_fds])
    mark(timing_fd, "monitor")
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # L forwards what is meant for the container
    if launch.detached:
        os.setsid()
        # Let go of the caller's terminal and pipes: whoever waits for `run -d`'s output must
        # see EOF once it printed the id.
        for target, fd in enumerate((stdio.stdin, stdio.stdout, stdio.stderr)):
            os.dup2(fd, target)
    forwarder = 0
    try:
        # The user, PID and network namespaces here (slirp4netns joins the network namespace by
        # our pid, before B exists); the mount namespace in B: A must keep the host's, as B's
        # pivot_root would move every process of a shared one into the container's root.
        if launch.join is not None and launch.holder is not None:
            from pbuild.tools.launcher import join

            # The stack's user namespace, our own network namespace on its bridge.
            join.enter(launch.join, launch.holder, launch.state.id)
            if launch.listeners:
                # Before the PID namespace: our next child is the container's PID 1.
                forwarder = _start_forwarder(launch)
            linux.unshare(launch.namespaces & linux.CLONE_NEWPID)
        else:
            linux.unshare(launch.namespaces & _MONITOR_NAMESPACES)
        if not launch.detached:
            # The new user namespace changed our credentials, which clears the death signal.
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                return EXIT_LAUNCHER
    except OSError as e:
        where = "join the stack's network" if launch.join is not None else "create the container's namespaces"
        report(errpipe, EXIT_LAUNCHER, f"cannot {where}: {e}")
        _end_forwarder(forwarder)
        return EXIT_LAUNCHER
    mark(timing_fd, "monitor-unshared")
    os.write(ready_w, b"u")
    if os.read(go_r, 1) != b"g":
        _end_forwarder(forwarder)
        return EXIT_LAUNCHER  # L could not write the id maps and said why
    os.close(go_r)
    child = os.fork()
    if child == 0:
        code = EXIT_LAUNCHER
        try:
            code = _container_init(launch, stdio, errpipe, timing_fd)
        except BaseException as e:  # noqa: BLE001 - must end in _exit
            report(errpipe, EXIT_LAUNCHER, f"container setup failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    store = ContainerStore(launch.store_root)
    state = launch.state._replace(status="running", pid=child, pid_start=process_start_time(child) or 0)
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
    _end_forwarder(forwarder)
    if launch.cgroups:
        from pbuild.tools.launcher import cgroups

        cgroups.remove(launch.cgroups)
    state = state._replace(status="exited", exit_code=code, finished=time.time())
    if launch.state.auto_remove:
        from pbuild.tools.launcher.lifecycle import remove_container

        remove_container(store, state)
    else:
        store.save(state)
    return code


def _start_forwarder(launch: Launch) -> int:
    """Fork the published ports' relay (``pbuild.tools.launcher.forward``) into our namespaces; it
    dies with us. Our copies of the listening sockets are closed: the relay holds them."""
    from pbuild.tools.launcher import forward

    assert launch.join is not None
    address = launch.join.address.partition("/")[0]
    monitor = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = EXIT_LAUNCHER
        try:
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() == monitor:
                linux.keep_only_fds([listener.sock.fileno() for listener in launch.listeners])
                null = os.open("/dev/null", os.O_RDWR)
                for target in (0, 1, 2):
                    os.dup2(null, target)
                for sig in (*_FORWARDED, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_IGN if sig == signal.SIGPIPE else signal.SIG_DFL)
                linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
                linux.capset(0, 0, 0)  # accept and connect need no privilege
                forward.serve(launch.listeners, address)
        finally:
            os._exit(code)
    for listener in launch.listeners:
        listener.sock.close()
    return pid


def _end_forwarder(pid: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _container_init(launch: Launch, stdio: Stdio, errpipe: int, timing_fd: int) -> int:
    """Process B: PID 1 of the container."""
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        mark(timing_fd, "init")
        linux.unshare(launch.namespaces & ~_MONITOR_NAMESPACES)
        mark(timing_fd, "init-unshared")
        nsops.apply(launch.ops)
        mark(timing_fd, "mounted")
    except OSError as e:
        report(errpipe, EXIT_LAUNCHER, f"container setup failed: {e}")
        return EXIT_LAUNCHER
    if not launch.init:
        return become_and_exec(launch.setup, stdio, errpipe, timing_fd)
    # B inherited SIG_IGN for the forwarded signals, and the kernel drops a signal ignored by a
    # namespace's PID 1: blocked until the handlers know the child's pid, they stay pending instead.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    child = os.fork()
    if child == 0:
        os._exit(become_and_exec(launch.setup, stdio, errpipe, timing_fd))
    forward_signals_to(child)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    try:  # the init is part of the container: the same filter (it needs no more than wait and kill)
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        seccomp.install(launch.setup.seccomp)
    except OSError as e:
        os.kill(child, signal.SIGKILL)
        report(errpipe, EXIT_LAUNCHER, f"cannot load the seccomp filter of the init: {e}")
        return EXIT_LAUNCHER
    os.close(errpipe)
    return reap_as_init(child)


def write_id_maps(pid: int, idmap: identity.IdMap) -> None:
    """From the parent namespace: the maps of the user namespace process ``pid`` created."""
    if idmap.helper:
        _run_id_map_helpers(pid, idmap)
        return
    try:
        linux.write_id_maps(str(pid), idmap.uid_map, idmap.gid_map, deny_setgroups=idmap.single)
    except OSError as e:
        raise LauncherError(f"cannot write the user namespace id maps: {e}") from None


def _run_id_map_helpers(pid: int, idmap: identity.IdMap) -> None:
    """newuidmap and newgidmap (a user without a range of its own ids has no other way)."""
    import subprocess  # only for the helpers: the common path writes the maps itself

    try:
        for tool, mapping in (("newuidmap", idmap.uid_map), ("newgidmap", idmap.gid_map)):
            subprocess.run([tool, str(pid), *mapping.split()], check=True, capture_output=True, text=True)
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
    net_exit_r, net_exit_w = os.pipe2(os.O_CLOEXEC) if launch.slirp else (-1, -1)
    parent = os.getpid()
    monitor = os.fork()
    if monitor == 0:
        code = EXIT_LAUNCHER
        try:
            if net_exit_r >= 0:
                os.close(net_exit_r)
            code = _monitor(launch, stdio, (ready_w, go_r, err_w), parent, timing_fd, net_exit_w)
        except BaseException as e:  # noqa: BLE001 - must end in _exit
            report(err_w, EXIT_LAUNCHER, f"container monitor failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    for fd in (ready_w, go_r, err_w, *stdio.owned):
        os.close(fd)
    if net_exit_w >= 0:
        os.close(net_exit_w)
    init_pid = 0
    try:
        if os.read(ready_r, 1) == b"u":
            try:
                if launch.join is None:  # a joined user namespace is mapped already
                    write_id_maps(monitor, idmap)
                if launch.slirp:
                    from pbuild.tools.launcher import network

                    cdir = ContainerStore(launch.store_root).container_dir(launch.state.id)
                    ports = launch.publish if launch.join is None else ()  # joined: our own forwarder
                    network.start_slirp(monitor, net_exit_r, cdir, ports)
                if launch.cgroups:
                    from pbuild.tools.launcher import cgroups

                    try:
                        cgroups.attach(launch.cgroups, monitor)
                    except OSError as e:
                        raise LauncherError(f"cannot move the container into its cgroup: {e}") from None
                os.write(go_w, b"g")
            except LauncherError as e:
                os.close(go_w)
                go_w = -1
                return monitor, 0, (e.exit_code, e.render().removeprefix("pbuild: error: "))
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
        if net_exit_r >= 0:
            os.close(net_exit_r)


class SignalForwarder:
    """Pass SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 sent to the launcher on to the container.

    Installed *before* the fork, so that a signal arriving while the container starts is kept
    and delivered once its pid is known instead of killing the launcher. Only the main thread
    may install handlers; elsewhere (an embedding program's worker thread) this does nothing.
    """

    def __init__(self) -> None:
        self.target = 0
        self.pending: list[int] = []
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        if self.target:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.target, signum)
        else:
            self.pending.append(signum)

    def __enter__(self) -> SignalForwarder:
        with contextlib.suppress(ValueError):
            for sig in _FORWARDED:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def forward_to(self, pid: int) -> None:
        self.target = pid
        while pid and self.pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, self.pending.pop(0))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def wait_monitor(monitor: int, on_idle: Callable[[], None] | None = None) -> int:
    """Wait for the monitor (running ``on_idle``, the pty relay, first); return its exit code."""
    if on_idle is not None:
        on_idle()
    while True:
        try:
            _, status = os.waitpid(monitor, 0)
            return exit_code_of(status)
        except InterruptedError:
            continue


def print_error(message: str) -> None:
    sys.stderr.write(f"pbuild: error: {message}\n")
    sys.stderr.flush()
