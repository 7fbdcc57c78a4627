"""``ps``, ``logs``, ``exec``, ``stop`` and ``rm``: containers after they started."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

from pbuild.tools.launcher import identity, process, seccomp
from pbuild.tools.launcher.config import merge_env
from pbuild.tools.launcher.errors import EXIT_FAILED, EXIT_LAUNCHER, LauncherError
from pbuild.tools.launcher.state import ContainerState, ContainerStore, is_alive
from pbuild.tools.sandbox import linux

_MONITOR_GRACE_S = 2.0  # how long a stop waits for the monitor to record the exit


def remove_container(store: ContainerStore, state: ContainerState) -> None:
    """Delete a container's directory (its upper layer, logs, state) and free its name."""
    from pbuild.tools.fstree import remove_tree
    from pbuild.tools.launcher import cgroups

    cgroups.remove(tuple(state.extra.get("cgroups") or ()))
    store.release_name(state)
    path = store.container_dir(state.id)
    if os.path.lexists(path):
        remove_tree(path)


def _ago(then: float) -> str:
    seconds = max(0, int(time.time() - then))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} seconds ago"


def ps(store: ContainerStore, show_all: bool) -> int:
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for state in store.all():
        if state.status != "running" and not show_all:
            continue
        if state.status == "running":
            status = f"Up (pid {state.pid})"
        elif state.exit_code is None:
            status = "Created"
        elif state.exit_code < 0:
            status = "Exited (launcher was killed)"
        else:
            status = f"Exited ({state.exit_code}) {_ago(state.finished or state.created)}"
        command = " ".join(state.command)
        if len(command) > 30:
            command = command[:27] + "..."
        image = state.image if len(state.image) <= 40 else "..." + state.image[-37:]
        ports = ", ".join(state.extra.get("ports") or ()) if state.status == "running" else ""
        rows.append((state.short_id, image, f'"{command}"', _ago(state.created), status, ports, state.name))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def logs(store: ContainerStore, name: str, follow: bool) -> int:
    state = store.find(name)
    path = os.path.join(store.container_dir(state.id), "log")
    if not os.path.exists(path):
        raise LauncherError(
            f"container {name} has no log",
            hint="only detached containers (run -d) write one; others print directly",
        )
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while True:
            data = f.read(65536)
            if data:
                out.write(data)
                out.flush()
                continue
            if not follow or not is_alive(store.find(name)):
                rest = f.read()
                if rest:
                    out.write(rest)
                    out.flush()
                    continue
                return 0
            time.sleep(0.1)


def stop_all(store: ContainerStore, names: list[str], timeout: float) -> int:
    """:func:`stop` each of ``names``; one that fails is reported, and the others still stopped."""
    code = 0
    for name in names:
        try:
            stop(store, name, timeout)
        except LauncherError as e:
            print(e.render(), file=sys.stderr)
            code = max(code, e.exit_code)
    return code


def stop(store: ContainerStore, name: str, timeout: float) -> int:
    """SIGTERM to the container's init, SIGKILL after ``timeout`` seconds."""
    state = store.find(name)
    stop_containers(store, [state], timeout)
    print(state.name)
    return 0


def stop_containers(store: ContainerStore, states: Iterable[ContainerState], timeout: float) -> None:
    """SIGTERM to each container's init at once, SIGKILL to those still running after
    ``timeout`` seconds; return once each has ended and its monitor recorded the exit (so that
    ``ps -a`` shows the code at once, and a removal does not race with that write; a ``--rm``
    container removes itself meanwhile: gone is stopped)."""
    pidfds: list[tuple[ContainerState, int]] = []
    for s in states:
        if not is_alive(s):
            continue
        with contextlib.suppress(ProcessLookupError):
            fd = os.pidfd_open(s.pid)
            if process_matches(s):  # not recycled between the check and the open
                signal.pidfd_send_signal(fd, signal.SIGTERM)
                pidfds.append((s, fd))
            else:
                os.close(fd)
    try:
        wait_pidfds([fd for _, fd in pidfds], timeout)
        for _, fd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        wait_pidfds([fd for _, fd in pidfds], 10.0)
    finally:
        for _, fd in pidfds:
            os.close(fd)
    deadline = time.monotonic() + _MONITOR_GRACE_S
    for s, _ in pidfds:
        while time.monotonic() < deadline:
            current = store.load(s.id)
            if current is None or current.status != "running":
                break
            time.sleep(0.01)


def wait_pidfds(pidfds: list[int], timeout: float) -> None:
    """Wait until every process of ``pidfds`` has ended, or ``timeout`` seconds have passed."""
    import select

    poller = select.poll()
    waiting = set(pidfds)
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for fd, _ in poller.poll(int(left * 1000) + 1):
            waiting.discard(fd)
            poller.unregister(fd)


def process_matches(state: ContainerState) -> bool:
    return is_alive(state)


def rm(store: ContainerStore, names: list[str], force: bool) -> int:
    code = 0
    for name in names:
        try:
            state = store.find(name)
            if is_alive(state):
                if not force:
                    raise LauncherError(
                        f"container {name} is running",
                        hint=f"stop it first (`pbuild stop {name}`) or use rm -f",
                        exit_code=EXIT_FAILED,
                    )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while is_alive(state) and time.monotonic() < deadline:
                    time.sleep(0.01)
            remove_container(store, state)
            print(state.name)
        except LauncherError as e:
            print(e.render(), file=sys.stderr)
            code = max(code, e.exit_code)
    return code


def exec_in(store: ContainerStore, name: str, argv: list[str], interactive: bool, tty: bool, *,
            env: tuple[str, ...] = (), workdir: str | None = None, user: str | None = None) -> int:
    """Run ``argv`` in a running container: join its namespaces, become its user, exec.
    ``env`` (``NAME=VALUE``, or ``NAME`` to copy ours) goes over the container's environment;
    ``workdir`` and ``user`` replace the container's."""
    state = store.find(name)
    if not is_alive(state):
        raise LauncherError(
            f"container {name} is not running", hint="`pbuild ps -a` shows its state", exit_code=EXIT_FAILED
        )
    if not argv:
        raise LauncherError("exec needs a command", hint=f"e.g. `pbuild exec {name} /bin/sh`")
    if workdir is not None and not workdir.startswith("/"):
        raise LauncherError(f"working directory {workdir!r} must be absolute", hint="e.g. -w /tmp")
    emulated = state.extra.get("emulated")
    if isinstance(emulated, str):  # another architecture: its handler may have been removed since the run
        from pbuild.lib.platforms import Platform
        from pbuild.tools.launcher import binfmt

        binfmt.require(Platform.parse(emulated), what=f"container {name} holds {emulated} programs: ")
    # The container's own capabilities and filter (Docker's exec keeps both).
    capabilities = int(state.extra.get("capabilities", identity.DEFAULT_CAP_MASK))
    program = seccomp.build_program(
        seccomp.policy_from_record(state.extra.get("seccomp")),
        identity.capability_names(capabilities),
        os.path.join(store.root, "seccomp"),
    )
    ns_fds = []
    try:
        for ns in ("user", "mnt", "pid", "net", "ipc", "uts"):
            path = f"/proc/{state.pid}/ns/{ns}"
            if ns == "net" and os.readlink(path) == os.readlink("/proc/self/ns/net"):
                continue  # --network host
            ns_fds.append((ns, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
    except OSError as e:
        for _, fd in ns_fds:
            os.close(fd)
        raise LauncherError(f"cannot open the namespaces of container {name}: {e}") from None
    if not process_matches(state):  # the pid was recycled between find() and open()
        for _, fd in ns_fds:
            os.close(fd)
        raise LauncherError(f"container {name} is not running")
    setup = process.ProcessSetup(
        argv=tuple(argv),
        env=tuple(merge_env(list(state.env), list(env))) if env else state.env,
        workdir=os.path.normpath(workdir) if workdir else state.workdir,
        user=user if user is not None else str(state.extra.get("user", "0")),
        tty=tty,
        single_map=bool(state.extra.get("single_map", True)),
        capabilities=capabilities,
        seccomp=program,
    )
    stdio, restore = _stdio(interactive, tty)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    joiner = os.fork()
    if joiner == 0:
        code = EXIT_LAUNCHER
        try:
            code = _join_and_exec(ns_fds, setup, stdio, err_w)
        except BaseException as e:  # noqa: BLE001 - must end in _exit
            process.report(err_w, EXIT_LAUNCHER, f"exec failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    os.close(err_w)
    for _, fd in ns_fds:
        os.close(fd)
    for fd in stdio.owned:
        os.close(fd)
    error = process.read_report(err_r)
    with process.SignalForwarder() as forwarder:
        forwarder.forward_to(joiner)
        try:
            code = process.wait_monitor(joiner, on_idle=_proxy(stdio, interactive) if tty else None)
        finally:
            restore()
    if error:
        process.print_error(error[1])
        return error[0]
    return code


def _join_and_exec(
    ns_fds: list[tuple[str, int]], setup: process.ProcessSetup, stdio: process.Stdio, errpipe: int
) -> int:
    linux.keep_only_fds([*stdio.child_fds, errpipe, *(fd for _, fd in ns_fds)])
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        for ns, fd in ns_fds:  # the user namespace first: it grants the rights to join the others
            linux.setns(fd, 0, ns)
            os.close(fd)
    except OSError as e:
        process.report(errpipe, EXIT_LAUNCHER, f"cannot join the container: {e}")
        return EXIT_LAUNCHER
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # setns(user) changed credentials
    child = os.fork()  # joining a PID namespace takes effect for children only
    if child == 0:
        os.setsid()
        os._exit(process.become_and_exec(setup, stdio, errpipe))
    os.close(errpipe)
    for sig in process._FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            return process.exit_code_of(status)
        except InterruptedError:
            continue


def _stdio(interactive: bool, tty: bool) -> tuple[process.Stdio, Callable[[], None]]:
    from pbuild.tools.launcher import terminal

    return terminal.open_stdio(interactive, tty, log_path=None)


def _proxy(stdio: process.Stdio, interactive: bool) -> Callable[[], None]:
    from pbuild.tools.launcher import terminal

    return lambda: terminal.proxy(stdio, interactive)
