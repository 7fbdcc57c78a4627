"""Run one process action in fresh Linux namespaces (the engine's action sandbox).

Inside, the action sees the host root read-only (so the host's ``/usr/bin/bash`` and
``python3`` work), the ``hide_paths`` masked by empty read-only tmpfs mounts, its exec root at
the fixed path ``/execroot`` (so outputs never contain host build paths), writable only its
declared output directories, a private ``/tmp`` and ``/run``, a fresh ``/proc``, a minimal
``/dev``, and without network (a new network namespace with only ``lo``, up).

Design (measured on the 2-core CI machine, ``bench/bench_sandbox.py``): a helper that is a new
Python process costs 10-20 ms of interpreter start alone, and ``bwrap`` costs about 9 ms per run
here, most of it exec and its own setup. Instead the calling process forks and the child sets up
the namespaces itself with ctypes syscalls before exec'ing the action, about 3-5 ms in all. The
engine calls this from many threads at once, so the child does as little as it can: everything
is planned and every file opened *before* the fork; the child closes fds it does not own at once
(a concurrent fork in another thread must not keep our pipe open), runs the planned operations
through one checked interpreter (``nsops.apply``) and execs.

Process tree: ``caller -> A -> B``. ``A`` unshares the user, mount, PID, network, IPC and UTS
namespaces and writes a single-id uid/gid map (the caller becomes root in the namespace, which
works unprivileged); ``B`` is PID 1 of the new PID namespace, builds the mount tree, pivots into
it and execs the action. Both die with their parent (``PR_SET_PDEATHSIG``), and when B (the
namespace's init) dies the kernel kills everything else in the namespace, so killing A, by a
timeout or a Ctrl-C of the engine, takes the whole action tree down.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pbuild.tools import linux, nsops

EXEC_ROOT = "/execroot"
"""Where the exec root appears inside the sandbox; fixed so outputs carry no host paths."""

HOSTNAME = "pbuild"
_NEW_ROOT = "/tmp"  # an existing host directory that receives the new root's tmpfs (see plan)
_OWN_MOUNTS = ("proc", "dev", "tmp", "run", EXEC_ROOT.lstrip("/"))
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_SETUP_FAILED = 125


@dataclass(frozen=True)
class SandboxRequest:
    """One process action to run sandboxed. Paths in ``writable_dirs``/``workdir`` are relative
    to ``exec_root``; ``hide_paths`` are absolute host paths."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    exec_root: str
    writable_dirs: tuple[str, ...]
    workdir: str
    hide_paths: tuple[str, ...]
    stdout_path: str
    stderr_path: str
    timeout_s: float | None = None
    network: bool = False
    hostname: str = HOSTNAME


@dataclass(frozen=True)
class SandboxResult:
    """``exit_code`` is 128+N when the action was killed by signal N (137 on timeout)."""

    exit_code: int
    duration_s: float
    error: str | None = None
    timed_out: bool = False


@dataclass(frozen=True)
class _Plan:
    ops: tuple[nsops.Op, ...]
    workdir: str
    namespaces: int
    argv: tuple[str, ...] = field(default_factory=tuple)


class SandboxRequestError(ValueError):
    """The request itself is malformed (a bug in the caller, not in the action)."""


def _inside(relative: str, what: str) -> str:
    norm = os.path.normpath(relative) if relative else "."
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise SandboxRequestError(f"{what} {relative!r} must be a relative path inside the exec root")
    return "" if norm == "." else norm


_root_cache: dict[tuple[str, int], tuple[nsops.Op, ...]] = {}


def _host_root_ops(new: str) -> tuple[nsops.Op, ...]:
    """Bind the host root one top-level entry at a time, so that /execroot can be added beside
    them without creating anything on the host. Cached while ``/`` is unchanged (its mtime
    changes when an entry is added or removed); listing it costs ~0.3 ms per action."""
    key = (new, os.stat("/").st_mtime_ns)
    cached = _root_cache.get(key)
    if cached is not None:
        return cached
    ops: list[nsops.Op] = []
    with os.scandir("/") as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name in _OWN_MOUNTS:
                continue
            if entry.is_symlink():
                ops.append(nsops.Symlink(os.readlink(entry.path), f"{new}/{entry.name}"))
            elif entry.is_dir(follow_symlinks=False):
                ops.append(nsops.MakeDir(f"{new}/{entry.name}"))
                ops.append(nsops.Mount(entry.path, f"{new}/{entry.name}", None, linux.MS_BIND | linux.MS_REC))
    _root_cache.clear()
    _root_cache[key] = result = tuple(ops)
    return result


def plan(request: SandboxRequest) -> _Plan:
    """Turn a request into the list of setup operations the child applies (pure, no syscalls
    except reading the host's ``/`` and checking the paths it is given)."""
    if not request.argv:
        raise SandboxRequestError("argv is empty")
    exec_root = os.path.realpath(request.exec_root)
    if not os.path.isdir(exec_root):
        raise SandboxRequestError(f"exec root {request.exec_root} is not a directory")
    new = _NEW_ROOT
    ops: list[nsops.Op] = [
        # The exec root may lie below _NEW_ROOT, which the next mount shadows: open it first.
        nsops.OpenPath(exec_root, nsops.Slot("exec")),
        nsops.Mount("tmpfs", new, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        # Nothing below the new root may propagate back to the host. A mount namespace created
        # with a new user namespace already turns the host's shared mounts into slaves (they
        # receive, never send), so making just this one mount private suffices; a recursive
        # MS_PRIVATE over every host mount would cost 0.5 ms per action.
        nsops.Mount(None, new, None, linux.MS_PRIVATE),
    ]
    for name in _OWN_MOUNTS:
        ops.append(nsops.MakeDir(f"{new}/{name}"))
    ops += _host_root_ops(new)
    for hidden in sorted(set(request.hide_paths)):
        real = os.path.realpath(hidden)
        top = real.strip("/").split("/", 1)[0]
        if real == "/" or top in _OWN_MOUNTS:
            continue  # "/" cannot be hidden; the own mounts are fresh and hold nothing of the host
        try:
            mode = os.stat(real).st_mode
        except OSError:
            continue  # nothing there, nothing to hide
        if stat.S_ISDIR(mode):
            ops.append(
                nsops.Mount(
                    "tmpfs",
                    new + real,
                    "tmpfs",
                    linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV,
                    "size=4k,mode=0755",
                )
            )
        else:
            ops.append(nsops.Mount("/dev/null", new + real, None, linux.MS_BIND))
    ro = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
    ops.append(nsops.SetAttr(new, ro))
    ops += [
        nsops.Mount("tmpfs", f"{new}/dev", "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755,size=64k"),
        nsops.MakeDir(f"{new}/dev/shm", 0o1777),
        nsops.MakeDir(f"{new}/dev/pts"),
    ]
    for dev in _DEVICES:
        if os.path.exists(f"/dev/{dev}"):
            ops.append(nsops.MakeFile(f"{new}/dev/{dev}", mode=0o666))
            ops.append(nsops.Mount(f"/dev/{dev}", f"{new}/dev/{dev}", None, linux.MS_BIND))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        ops.append(nsops.Symlink(target, f"{new}/dev/{name}"))
    ops += [
        nsops.Mount("proc", f"{new}/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC),
        nsops.Mount("tmpfs", f"{new}/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
        nsops.Mount("tmpfs", f"{new}/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        nsops.Mount(nsops.Slot("exec"), new + EXEC_ROOT, None, linux.MS_BIND | linux.MS_REC),
        nsops.SetAttr(new + EXEC_ROOT, ro),
    ]
    for writable in sorted(set(request.writable_dirs)):
        rel = _inside(writable, "writable dir")
        if not os.path.isdir(os.path.join(exec_root, rel)):
            raise SandboxRequestError(
                f"writable dir {writable!r} does not exist under the exec root {exec_root}"
            )
        target = f"{new}{EXEC_ROOT}/{rel}" if rel else new + EXEC_ROOT
        # A bind of the directory onto itself is a new mount; it inherits read-only from the
        # exec root's mount, which we set ourselves and so may clear again on this one mount.
        ops.append(nsops.Mount(target, target, None, linux.MS_BIND))
        ops.append(nsops.SetAttr(target, 0, linux.MOUNT_ATTR_RDONLY, recursive=False))
    ops.append(nsops.SetHostname(request.hostname))
    namespaces = (
        linux.CLONE_NEWUSER | linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
    )
    if not request.network:
        namespaces |= linux.CLONE_NEWNET
        ops.append(nsops.LoopbackUp())
    ops.append(nsops.PivotRoot(new))
    workdir = _inside(request.workdir, "workdir")
    return _Plan(
        ops=tuple(ops),
        workdir=f"{EXEC_ROOT}/{workdir}" if workdir else EXEC_ROOT,
        namespaces=namespaces,
        argv=tuple(request.argv),
    )


def _find_executable(name: str, env: Mapping[str, str]) -> str | None:
    if "/" in name:
        return name
    for directory in env.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _keep_only_fds(keep: list[int]) -> None:
    """Close every fd >= 3 except ``keep``: fds another thread opened around our fork would
    otherwise stay open for the action's whole life (e.g. its error pipe, delaying its EOF)."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            if fd > low:
                linux.close_range(low, fd - 1)
            low = fd + 1
    linux.close_range(low)


def _report(errpipe: int, message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(errpipe, message.encode(errors="replace"))


def _child_a(p: _Plan, env: Mapping[str, str], fds: tuple[int, int, int], errpipe: int, parent: int) -> int:
    """First child: new namespaces and id maps, then fork the action (PID 1 of the new pid ns)."""
    uid, gid = os.geteuid(), os.getegid()
    _keep_only_fds([*fds, errpipe])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        linux.unshare(p.namespaces)
        # Credentials changed with the new user namespace, which clears the death signal: set
        # it now, then make sure the parent did not die before it took effect.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return _SETUP_FAILED
        linux.write_id_maps("self", f"0 {uid} 1\n", f"0 {gid} 1\n")
        child = os.fork()
    except OSError as e:
        _report(errpipe, f"sandbox setup failed: {e}")
        return _SETUP_FAILED
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


def _child_b(p: _Plan, env: Mapping[str, str], fds: tuple[int, int, int], errpipe: int) -> int:
    """PID 1 of the sandbox: mounts, pivot_root, then exec the action."""
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # A died before the death signal was armed
            return _SETUP_FAILED
        nsops.apply(p.ops)
        try:
            os.chdir(p.workdir)
        except OSError as e:
            raise linux.LinuxError(e.errno or 0, f"chdir({p.workdir})") from None
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        _report(errpipe, f"sandbox setup failed: {e}")
        return _SETUP_FAILED
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # ignored signals would survive exec
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    linux.close_range(3, cloexec=True)
    path = _find_executable(p.argv[0], env)
    if path is None:
        os.write(2, f"pbuild-sandbox: {p.argv[0]}: command not found\n".encode())
        return 127
    try:
        os.execve(path, list(p.argv), dict(env))
    except OSError as e:
        os.write(2, f"pbuild-sandbox: cannot execute {path}: {e.strerror}\n".encode())
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 126  # pragma: no cover - execve does not return


def _open_output(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def run_sandboxed(request: SandboxRequest) -> SandboxResult:
    """Run ``request.argv`` in a fresh sandbox and wait for it; safe to call from many threads."""
    start = time.perf_counter()
    try:
        p = plan(request)
    except (SandboxRequestError, OSError) as e:
        return SandboxResult(
            _SETUP_FAILED, time.perf_counter() - start, error=f"sandbox request refused: {e}"
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
        return SandboxResult(_SETUP_FAILED, time.perf_counter() - start, error=f"sandbox: {e}")
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child A: never returns into the caller's code
        code = _SETUP_FAILED
        try:
            code = _child_a(p, env, (stdin, stdout, stderr), write_end, parent)
        except BaseException as e:  # noqa: BLE001 - anything here must end in _exit
            _report(write_end, f"sandbox setup failed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    for fd in opened:
        if fd != read_end:
            os.close(fd)
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
