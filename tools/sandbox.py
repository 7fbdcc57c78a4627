"""Run one process action in fresh Linux namespaces (the engine's action sandbox).

Inside, the action sees one of two roots, read-only: the host's (so the host's ``/usr/bin/bash``
and ``python3`` work; the ``hide_paths`` are masked by empty read-only tmpfs mounts), or, with
``SandboxRequest.root``, a toolchain tree (an unpacked ``deb_packages`` or image root) as its
``/``, with nothing of the host's filesystem visible and argv[0] looked up on the PATH inside the
tree, its links followed as if it were ``/``. Either way it has its exec root at the fixed path
``/execroot`` (so outputs never contain host build paths), writable only its declared output
directories, a private ``/tmp`` and ``/run``, a fresh ``/proc``, a minimal ``/dev``, and no
network (a new network namespace with only ``lo``, up). Both roots are laid out the same way:
each top-level entry bound (or linked) on a fresh read-only tmpfs beside those own mounts, so a
read-only tree need not contain their mount points.

Two backends, one contract (``tests/unit/test_sandbox.py`` runs every test against both):

- ``bwrap`` (bubblewrap, Debian ``bubblewrap``; the default when installed). Measured with
  ``bench/bench_sandbox.py`` on the 2-core CI machine: about 4-5 ms of CPU per action against
  about 20-24 ms for the forked backend, and a lower wall time whenever the machine is busy
  (which it is under ``--jobs N``). It is the well-kept tool for exactly this job, execs from
  ``subprocess`` without copying our address space, and is the one most people audit.
- ``fork``: the calling process forks and the child sets up the namespaces itself with ctypes
  syscalls (``linux.py``, ``nsops.py``) before exec'ing the action: no dependency, same
  semantics. Its cost is the kernel copying and then tearing down a large Python address space
  three times per action (A, B, the action), plus the page faults Python's reference counting
  causes in each copy: measured ~1,200 minor faults per action against ~100 for bwrap.

A helper that is a new Python process would cost 10-20 ms of interpreter start alone.

Fork backend process tree: ``caller -> A -> B -> action``. The engine calls this from many
threads at once, so the children do as little as they can: everything is planned and every file
opened *before* the fork; A first closes the fds it does not own (a concurrent fork in another
thread must not keep our pipe open). A unshares the user, mount, PID, network, IPC and UTS
namespaces and writes a single-id uid/gid map (the caller becomes root in the namespace, which
works unprivileged); B is PID 1 of the new PID namespace, builds the mount tree through one
checked interpreter (``nsops.apply``), pivots into it and forks the action, staying as a small
init (signals, orphans, exit status). Both die with their parent (``PR_SET_PDEATHSIG``), and
when B dies the kernel kills everything else in the namespace, so killing A, by a timeout or a
Ctrl-C of the engine, takes the whole action tree down. With bwrap the same holds through
``--die-with-parent`` and bwrap's own PID 1.

:func:`exec_on_root` starts a program the same way for ``pbuild run`` (a toolchain tree as ``/``,
but interactive: the caller's uid, the network, the terminal and the host's ``/dev`` shared, and
chosen host directories bound writable at their own paths).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from pbuild.tools import linux, nsops

EXEC_ROOT = "/execroot"
"""Where the exec root appears inside the sandbox; fixed so outputs carry no host paths."""

HOSTNAME = "pbuild"
NOT_IN_TOOLCHAIN = "command not found in the toolchain"
"""What the sandbox writes to an action's stderr, after ``pbuild-sandbox: NAME: ``, when argv[0]
is not on the PATH of its toolchain root (:func:`missing_from_toolchain` recognizes it)."""
_DEFAULT_PATH = "/usr/bin:/bin"
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
    """The action's whole environment; the sandbox adds only ``PWD`` (the working directory inside,
    e.g. ``/execroot/pkg``: fixed, so it keeps actions deterministic) unless it is given."""
    exec_root: str
    writable_dirs: tuple[str, ...]
    workdir: str
    hide_paths: tuple[str, ...]
    stdout_path: str
    stderr_path: str
    timeout_s: float | None = None
    network: bool = False
    hostname: str = HOSTNAME
    root: str | None = None
    """A directory the action sees as its read-only ``/`` (a toolchain tree) instead of the host's
    root; ``hide_paths`` are then moot (nothing of the host is visible)."""
    backend: str = "auto"
    """``bwrap`` (bubblewrap, the default when installed), ``fork`` (our own namespace setup in a
    forked child), or ``auto``; ``$PBUILD_SANDBOX_BACKEND`` overrides ``auto``."""


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
    on_toolchain: bool = False
    id_maps: tuple[str, str] | None = None
    """uid_map and gid_map lines; None maps the caller to root, as an action's sandbox does."""
    interactive: bool = False
    """A ``pbuild run``: the terminal's SIGINT/SIGQUIT reach the program alone (the sandbox's
    own processes ignore them), and the caller's umask is kept."""


class SandboxRequestError(ValueError):
    """The request itself is malformed (a bug in the caller, not in the action)."""


def _writable_dir(exec_root: str, writable: str) -> str:
    """The relative path of a writable dir, checked to be a real directory of the exec root:
    through a symlink, a bind would make a directory outside it writable."""
    rel = _inside(writable, "writable dir")
    full = os.path.join(exec_root, rel)
    if not os.path.isdir(full):
        raise SandboxRequestError(f"writable dir {writable!r} does not exist under the exec root {exec_root}")
    if os.path.realpath(full) != os.path.normpath(full):
        raise SandboxRequestError(
            f"writable dir {writable!r} goes through a symlink; it must be a real directory"
        )
    return rel


def _inside(relative: str, what: str) -> str:
    norm = os.path.normpath(relative) if relative else "."
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise SandboxRequestError(f"{what} {relative!r} must be a relative path inside the exec root")
    return "" if norm == "." else norm


@dataclass(frozen=True)
class _RootEntry:
    """One entry of a root the action sees as ``/``, by its path relative to the root: a
    symlink (``target``), a directory or file to bind, or an empty directory (made, not bound)."""

    name: str
    kind: str  # "link", "dir", "file" or "empty"
    target: str = ""


_root_cache: dict[tuple[str, bool], tuple[tuple[object, ...], tuple[_RootEntry, ...]]] = {}


def _root_entries(source: str, top: bool = True) -> tuple[_RootEntry, ...]:
    """The entries of ``source`` (the host's ``/`` or a toolchain tree, or a directory in one),
    bound one at a time so that our own mounts (/proc, /dev, /tmp, /run, /execroot) can be made
    beside them on a fresh tmpfs: nothing is created on the host, and a read-only tree need not
    contain their mount points. At the ``top``, entries of those names are left out, as are
    regular files (a root filesystem keeps nothing there that a program needs). An empty directory
    (``/srv``, ``/media``, ``lost+found`` to us) becomes just an empty directory: each bind costs
    bwrap a parse of the mount table. Cached per source while it and its directories are
    unchanged (a stat each, against ~0.3 ms for listing them; a mount on one changes its inode)."""
    stats = []
    for name in sorted(os.listdir(source)):
        try:
            st = os.lstat(os.path.join(source, name))
            stats.append((name, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_mode))
        except OSError:
            continue
    stamp = (os.stat(source).st_mtime_ns, tuple(stats))
    cached = _root_cache.get((source, top))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    entries: list[_RootEntry] = []
    for name, *_, mode in stats:
        if top and name in _OWN_MOUNTS:
            continue
        path = os.path.join(source, name)
        if stat.S_ISLNK(mode):
            entries.append(_RootEntry(name, "link", os.readlink(path)))
        elif stat.S_ISDIR(mode):
            try:
                with os.scandir(path) as listing:
                    empty = next(listing, None) is None
            except OSError:
                empty = True  # unreadable to us: the action could not read it either
            entries.append(_RootEntry(name, "empty" if empty else "dir"))
        elif stat.S_ISREG(mode) and not top:
            entries.append(_RootEntry(name, "file"))
    if len(_root_cache) >= 16:  # a few toolchains and the host; old trees are not kept forever
        _root_cache.clear()
    _root_cache[(source, top)] = (stamp, tuple(entries))
    return tuple(entries)


def _root_layout(source: str, opened: Sequence[str] = ()) -> list[_RootEntry]:
    """The entries that make ``source`` the ``/`` (see :func:`_root_entries`). ``opened`` are
    absolute paths inside where host directories will be bound (``exec_on_root``): each directory
    of the tree on the way there is made on the tmpfs and laid out entry by entry instead of being
    bound whole, so that the mount point can be made without writing to the tree."""
    wanted = [path.strip("/") for path in opened]
    layout: list[_RootEntry] = []

    def lay_out(prefix: str) -> None:
        for entry in _root_entries(os.path.join(source, prefix), top=not prefix):
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            below = [w for w in wanted if w == rel or w.startswith(rel + "/")]
            if not below or entry.kind == "empty":
                layout.append(_RootEntry(rel, entry.kind, entry.target))
            elif entry.kind == "dir":
                layout.append(_RootEntry(rel, "empty"))
                if rel not in wanted:  # a bind on rel itself covers all of it
                    lay_out(rel)
            else:
                raise SandboxRequestError(f"cannot bind /{below[0]}: /{rel} is a {entry.kind} in the root")

    lay_out("")
    return layout


def _root_ops(new: str, source: str, opened: Sequence[str] = ()) -> list[nsops.Op]:
    """The fork backend's view of ``source`` as ``/`` below ``new`` (see :func:`_root_layout`).
    Sources are reached through the directory opened before the new root's tmpfs shadowed it
    (a toolchain tree may lie below ``/tmp``)."""
    ops: list[nsops.Op] = []
    for entry in _root_layout(source, opened):
        path = f"{new}/{entry.name}"
        if entry.kind == "link":
            ops.append(nsops.Symlink(entry.target, path))
        elif entry.kind == "file":
            ops.append(nsops.MakeFile(path))
            ops.append(nsops.Mount(nsops.Slot("root", entry.name), path, None, linux.MS_BIND))
        else:
            ops.append(nsops.MakeDir(path))
            if entry.kind == "dir":
                ops.append(
                    nsops.Mount(nsops.Slot("root", entry.name), path, None, linux.MS_BIND | linux.MS_REC)
                )
    return ops


def _root_of(request: SandboxRequest) -> str:
    """The directory the action sees as ``/``: the host's, or the request's toolchain tree."""
    if request.root is None:
        return "/"
    root = os.path.realpath(request.root)
    if not os.path.isdir(root):
        raise SandboxRequestError(f"root {request.root} is not a directory")
    return root


def plan(request: SandboxRequest) -> _Plan:
    """Turn a request into the list of setup operations the child applies (pure, no syscalls
    except reading the host's ``/`` and checking the paths it is given)."""
    if not request.argv:
        raise SandboxRequestError("argv is empty")
    exec_root = os.path.realpath(request.exec_root)
    if not os.path.isdir(exec_root):
        raise SandboxRequestError(f"exec root {request.exec_root} is not a directory")
    root = _root_of(request)
    new = _NEW_ROOT
    ops: list[nsops.Op] = [
        # The exec root and the root may lie below _NEW_ROOT, which the next mount shadows: open
        # them first.
        nsops.OpenPath(exec_root, nsops.Slot("exec")),
        nsops.OpenPath(root, nsops.Slot("root")),
        nsops.Mount("tmpfs", new, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        # Nothing below the new root may propagate back to the host. A mount namespace created
        # with a new user namespace already turns the host's shared mounts into slaves (they
        # receive, never send), so making just this one mount private suffices; a recursive
        # MS_PRIVATE over every host mount would cost 0.5 ms per action.
        nsops.Mount(None, new, None, linux.MS_PRIVATE),
    ]
    for name in _OWN_MOUNTS:
        ops.append(nsops.MakeDir(f"{new}/{name}"))
    ops += _root_ops(new, root)
    for hidden in _hidden(request):
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
        rel = _writable_dir(exec_root, writable)
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
        on_toolchain=request.root is not None,
    )


def _not_found_message(name: str, *, on_toolchain: bool) -> str:
    return f"pbuild-sandbox: {name}: {NOT_IN_TOOLCHAIN if on_toolchain else 'command not found'}\n"


_MISSING_LINES = (
    re.compile(rf"^pbuild-sandbox: (.+): {NOT_IN_TOOLCHAIN}$"),  # argv[0] itself
    re.compile(r"^\S+: (?:line \d+: )?([^\s:/]+): command not found$"),  # bash, in the action's script
    re.compile(r"^\S+: \d+: ([^\s:/]+): not found$"),  # dash
)


def missing_from_toolchain(stderr: str, exit_code: int) -> str | None:
    """The program an action on a toolchain root failed to find, or None: argv[0] (the
    sandbox's ``NOT_IN_TOOLCHAIN`` line) or a command its shell script ran (bash's and dash's
    "command not found"), recognized only with the exit code 127 they imply. Lets the engine
    name the toolchain and the Debian package hint."""
    if exit_code != 127:
        return None
    for line in reversed(stderr.splitlines()):
        for pattern in _MISSING_LINES:
            match = pattern.match(line)
            if match:
                return match.group(1)
    return None


def _hidden(request: SandboxRequest) -> list[str]:
    """The host paths to mask; none on a toolchain root, where nothing of the host is visible."""
    return [] if request.root is not None else sorted(set(request.hide_paths))


def _find_executable(name: str, env: Mapping[str, str]) -> str | None:
    if "/" in name:
        return name
    for directory in env.get("PATH", _DEFAULT_PATH).split(":"):
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
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        interrupt = sig in (signal.SIGINT, signal.SIGQUIT)
        signal.signal(sig, signal.SIG_IGN if p.interactive and interrupt else signal.SIG_DFL)
    try:
        linux.unshare(p.namespaces)
        # Credentials changed with the new user namespace, which clears the death signal: set
        # it now, then make sure the parent did not die before it took effect.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return _SETUP_FAILED
        uid_map, gid_map = p.id_maps or (f"0 {uid} 1\n", f"0 {gid} 1\n")
        linux.write_id_maps("self", uid_map, gid_map)
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
    """PID 1 of the sandbox: mounts and pivot_root, then a small init around the action.

    The action must not be PID 1 itself: the kernel drops signals a namespace's init has no
    handler for, so `kill -9 $$` or `abort()` in a build command would be survived. B forks it,
    forwards SIGINT/SIGTERM/SIGHUP, reaps orphans, and exits with its status (128+N for signal N).
    """
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 0 and os.getpid() != 1:  # pragma: no cover - not in our PID namespace
            return _SETUP_FAILED
        nsops.apply(p.ops)
        try:
            os.chdir(p.workdir)
        except OSError as e:
            raise linux.LinuxError(e.errno or 0, f"chdir({p.workdir})") from None
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        action = os.fork()
    except OSError as e:
        _report(errpipe, f"sandbox setup failed: {e}")
        return _SETUP_FAILED
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
            return _SETUP_FAILED
        if pid == action:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _exec_action(p: _Plan, env: Mapping[str, str], fds: tuple[int, int, int]) -> int:
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
        os.write(2, _not_found_message(p.argv[0], on_toolchain=p.on_toolchain).encode())
        return 127
    try:
        os.execve(path, list(p.argv), {**env, "PWD": env.get("PWD", p.workdir)})
    except OSError as e:
        os.write(2, f"pbuild-sandbox: cannot execute {path}: {e.strerror}\n".encode())
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 126  # pragma: no cover - execve does not return


def _open_output(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def run_sandboxed(request: SandboxRequest) -> SandboxResult:
    """Run ``request.argv`` in a fresh sandbox and wait for it; safe to call from many threads."""
    backend = request.backend
    if backend == "auto":
        backend = os.environ.get("PBUILD_SANDBOX_BACKEND") or ("bwrap" if _bwrap() else "fork")
    if backend == "bwrap":
        binary = _bwrap()
        if binary is None:
            return SandboxResult(
                _SETUP_FAILED, 0.0, error="sandbox backend bwrap requested, but bwrap is not installed"
            )
        return _run_bwrap(request, binary)
    if backend != "fork":
        return SandboxResult(
            _SETUP_FAILED, 0.0, error=f"unknown sandbox backend {backend!r} (bwrap, fork or auto)"
        )
    return _run_forked(request)


def _run_forked(request: SandboxRequest) -> SandboxResult:
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


# --- the bwrap backend -------------------------------------------------------------------------

_bwrap_path: list[str | None] = []


def _bwrap() -> str | None:
    if not _bwrap_path:
        import shutil

        _bwrap_path.append(shutil.which("bwrap"))
    return _bwrap_path[0]


def _root_args(source: str, hidden: set[str], opened: Sequence[str] = ()) -> list[str]:
    """``--ro-bind``/``--dir``/``--symlink`` for each entry of :func:`_root_layout` (as the fork
    backend's :func:`_root_ops`), so that /execroot can be added beside them. A hidden top-level
    directory is not bound at all (its tmpfs comes later)."""
    args: list[str] = []
    for entry in _root_layout(source, opened):
        path = f"/{entry.name}"
        if entry.kind == "link":
            args += ["--symlink", entry.target, path]
        elif entry.kind == "empty" or path in hidden:
            args += ["--dir", path]
        else:
            args += ["--ro-bind", os.path.join(source, entry.name), path]
    return args


def bwrap_argv(request: SandboxRequest, binary: str, command: str) -> list[str]:
    """The bwrap command line for ``request`` (``command``: argv[0] resolved inside)."""
    exec_root = os.path.realpath(request.exec_root)
    argv = [binary, "--unshare-all", *(["--share-net"] if request.network else []), "--die-with-parent",
            "--new-session", "--uid", "0", "--gid", "0", "--hostname", request.hostname]  # fmt: skip
    hidden = _hidden(request)
    argv += _root_args(_root_of(request), {os.path.realpath(h) for h in hidden})
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for path in hidden:
        real = os.path.realpath(path)
        top = real.strip("/").split("/", 1)[0]
        if real == "/" or top in _OWN_MOUNTS:
            continue
        if os.path.isdir(real):
            argv += ["--perms", "0755", "--size", "4096", "--tmpfs", real, "--remount-ro", real]
        elif os.path.lexists(real):
            argv += ["--ro-bind", "/dev/null", real]
    argv += ["--ro-bind", exec_root, EXEC_ROOT]
    for writable in sorted(set(request.writable_dirs)):
        rel = _writable_dir(exec_root, writable)
        argv += ["--bind", os.path.join(exec_root, rel), f"{EXEC_ROOT}/{rel}" if rel else EXEC_ROOT]
    workdir = _inside(request.workdir, "workdir")
    # The tmpfs that holds the new root is read-only, as the fork backend's (only that mount:
    # /tmp, /run and the writable dirs stay writable).
    argv += ["--remount-ro", "/"]
    argv += ["--chdir", f"{EXEC_ROOT}/{workdir}" if workdir else EXEC_ROOT, "--"]
    return [*argv, command, *request.argv[1:]]


def _host_view(path: str, exec_root: str, workdir: str, hidden: list[str], root: str | None) -> str | None:
    """Where the file the action would see at ``path`` lies on the host (None: not visible).
    On a toolchain ``root``, links are followed as if it were ``/``, so never to the host."""
    if not path.startswith("/"):
        path = os.path.join(EXEC_ROOT, workdir, path)
    path = os.path.normpath(path)
    if path == EXEC_ROOT or path.startswith(EXEC_ROOT + "/"):
        return exec_root + path[len(EXEC_ROOT) :]
    top = path.strip("/").split("/", 1)[0]
    if top in _OWN_MOUNTS or any(path == h or path.startswith(h + "/") for h in hidden):
        return None
    if root is None:
        return path
    try:
        resolved = nsops.resolve_in_root(root, path)
    except OSError:
        return None
    inside = os.path.relpath(resolved, root).split("/", 1)[0]
    # A link into /tmp, /proc... of the tree: those are the sandbox's own, empty at the start.
    return None if inside in _OWN_MOUNTS else resolved


def _resolve_command(request: SandboxRequest) -> tuple[str | None, int]:
    """argv[0] as the action would find it through its PATH: (path inside, 0), or (None, 127/126).

    Resolved here because bwrap reports a missing command as exit code 1, like any failure."""
    exec_root = os.path.realpath(request.exec_root)
    workdir = _inside(request.workdir, "workdir")
    hidden = [os.path.realpath(h) for h in _hidden(request)]
    root = None if request.root is None else _root_of(request)
    name = request.argv[0]
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in request.env.get("PATH", _DEFAULT_PATH).split(":")
    ]  # fmt: skip
    found_but_not_executable = False
    for candidate in candidates:
        host = _host_view(candidate, exec_root, workdir, hidden, root)
        if host is None or not os.path.isfile(host):
            continue
        if os.access(host, os.X_OK):
            return candidate, 0
        found_but_not_executable = True
    return None, 126 if found_but_not_executable else 127


def _run_bwrap(request: SandboxRequest, binary: str) -> SandboxResult:
    """Run under bwrap; a setup failure caused by a host mount that vanished while bwrap was
    copying the mount tree (container engines churn mounts under /var) is retried once."""
    result = _run_bwrap_once(request, binary)
    if result.error and result.error.startswith("sandbox setup failed") and "mount" in result.error:
        retry = _run_bwrap_once(request, binary)
        return SandboxResult(
            retry.exit_code, result.duration_s + retry.duration_s, retry.error, retry.timed_out
        )
    return result


def _run_bwrap_once(request: SandboxRequest, binary: str) -> SandboxResult:
    import subprocess

    start = time.perf_counter()
    try:
        if not request.argv:
            raise SandboxRequestError("argv is empty")
        if not os.path.isdir(request.exec_root):
            raise SandboxRequestError(f"exec root {request.exec_root} is not a directory")
        command, missing = _resolve_command(request)
        argv = bwrap_argv(request, binary, command or request.argv[0])
    except (SandboxRequestError, OSError) as e:
        return SandboxResult(
            _SETUP_FAILED, time.perf_counter() - start, error=f"sandbox request refused: {e}"
        )
    try:
        stdout = open(request.stdout_path, "wb")  # noqa: SIM115 - closed below
        stderr = stdout if request.stderr_path == request.stdout_path else open(request.stderr_path, "wb")  # noqa: SIM115
    except OSError as e:
        return SandboxResult(_SETUP_FAILED, time.perf_counter() - start, error=f"sandbox: {e}")
    try:
        if command is None:
            if missing == 127:
                message = _not_found_message(request.argv[0], on_toolchain=request.root is not None)
            else:
                message = f"pbuild-sandbox: {request.argv[0]}: permission denied (not executable)\n"
            stderr.write(message.encode())
            return SandboxResult(missing, time.perf_counter() - start)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            process = subprocess.Popen(
                [*argv[:1], "--json-status-fd", str(status_w), *argv[1:]],
                env=dict(request.env), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                pass_fds=(status_w,), umask=0o022, close_fds=True,
            )  # fmt: skip
        except OSError as e:
            os.close(status_r)
            return SandboxResult(
                _SETUP_FAILED, time.perf_counter() - start, error=f"cannot start {binary}: {e}"
            )
        finally:
            os.close(status_w)
        timed_out = False
        try:
            remaining = (
                None
                if request.timeout_s is None
                else max(0.0, start + request.timeout_s - time.perf_counter())
            )
            process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            process.kill()
            process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        with os.fdopen(status_r, "rb") as status_file:
            status = status_file.read()
        duration = time.perf_counter() - start
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        if timed_out:
            return SandboxResult(128 + signal.SIGKILL, duration, timed_out=True)
        if b'"exit-code"' not in status:
            # bwrap failed before the action could start (it writes "exit-code" only for the
            # action itself); its message is the last "bwrap:" line of the stderr file.
            stderr.flush()
            with open(request.stderr_path, "rb") as f:
                lines = [
                    line
                    for line in f.read().decode(errors="replace").splitlines()
                    if line.startswith("bwrap:")
                ]
            return SandboxResult(
                _SETUP_FAILED,
                duration,
                error="sandbox setup failed: " + (lines[-1] if lines else f"bwrap exited {code}"),
            )
        return SandboxResult(code, duration)
    finally:
        stdout.close()
        if stderr is not stdout:
            stderr.close()


# --- a program on a toolchain root, interactively (pbuild run) -----------------------------------

_RUN_OWN_MOUNTS = ("proc", "dev", "tmp", "run")


def _run_binds(binds: Sequence[str]) -> list[str]:
    """The host directories to bind at their own paths, checked, without those inside another
    (the outer bind already shows them, at the same place)."""
    real: list[str] = []
    for bind in sorted({os.path.realpath(b) for b in binds}):
        if not os.path.isdir(bind):
            raise SandboxRequestError(f"bind {bind} is not a directory")
        top = bind.strip("/").split("/", 1)[0]
        if bind == "/" or top in ("proc", "dev"):
            raise SandboxRequestError(f"bind {bind}: / and the sandbox's own /proc and /dev cannot be bound")
        if not any(bind.startswith(outer + "/") for outer in real):
            real.append(bind)
    return real


def _run_command(root: str, name: str, env: Mapping[str, str], binds: list[str], cwd: str) -> str | None:
    """argv[0] as the program on ``root`` would find it through its PATH (None: not there)."""
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in env.get("PATH", _DEFAULT_PATH).split(":")
    ]  # fmt: skip
    for candidate in candidates:
        path = os.path.normpath(os.path.join(cwd, candidate))
        bound = [b for b in binds if path == b or path.startswith(b + "/")]
        if bound:
            host: str | None = path
        elif path.strip("/").split("/", 1)[0] in _RUN_OWN_MOUNTS:
            host = None
        else:
            try:
                host = nsops.resolve_in_root(root, path)
            except OSError:
                host = None
        if host is not None and os.path.isfile(host) and os.access(host, os.X_OK):
            return candidate
    return None


def _run_plan(root: str, argv: Sequence[str], binds: list[str], cwd: str) -> _Plan:
    """The fork backend's setup for :func:`exec_on_root` (see :func:`plan` for the pattern)."""
    new = _NEW_ROOT
    ops: list[nsops.Op] = [nsops.OpenPath(root, nsops.Slot("root"))]
    ops += [nsops.OpenPath(b, nsops.Slot(f"bind{i}")) for i, b in enumerate(binds)]
    ops += [
        nsops.Mount("tmpfs", new, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        nsops.Mount(None, new, None, linux.MS_PRIVATE),
    ]
    ops += [nsops.MakeDir(f"{new}/{name}") for name in _RUN_OWN_MOUNTS]
    ops += _root_ops(new, root, binds)

    def mount_points(under_own: bool) -> list[nsops.Op]:
        made: list[nsops.Op] = []
        for bind in binds:
            parts = bind.strip("/").split("/")
            if (parts[0] in _RUN_OWN_MOUNTS) == under_own:
                made += [nsops.MakeDir(new + "/" + "/".join(parts[:n])) for n in range(1, len(parts) + 1)]
        return made

    ops += mount_points(under_own=False)
    ops.append(nsops.SetAttr(new, linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV))
    ops += [
        nsops.Mount("/dev", f"{new}/dev", None, linux.MS_BIND | linux.MS_REC),  # a terminal works
        nsops.Mount("proc", f"{new}/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC),
        nsops.Mount("tmpfs", f"{new}/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
        nsops.Mount("tmpfs", f"{new}/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
    ]
    ops += mount_points(under_own=True)
    for i, bind in enumerate(binds):
        ops.append(nsops.Mount(nsops.Slot(f"bind{i}"), new + bind, None, linux.MS_BIND | linux.MS_REC))
    ops.append(nsops.PivotRoot(new))
    uid, gid = os.geteuid(), os.getegid()
    return _Plan(
        ops=tuple(ops),
        workdir=cwd,
        namespaces=linux.CLONE_NEWUSER | linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC,
        argv=tuple(argv),
        on_toolchain=True,
        id_maps=(f"{uid} {uid} 1\n", f"{gid} {gid} 1\n"),
        interactive=True,
    )


def exec_on_root(
    root: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    binds: Sequence[str],
    cwd: str,
    backend: str = "auto",
) -> NoReturn:
    """Become ``argv`` running on the tree ``root`` as its read-only ``/`` (``pbuild run`` of a
    program on its toolchain): the host directories ``binds`` writable at their own paths (the
    workspace, the working directory, the output tree), the working directory ``cwd``, the
    network, stdin/stdout/stderr and the terminal shared, the caller's own uid and gid (not
    root), the host's ``/dev``, a fresh ``/proc``, a private ``/tmp`` and ``/run``; nothing else
    of the host is visible. The exit status is the program's (128+N for signal N).

    Call it from a single-threaded process. With bwrap (``backend`` as for
    :class:`SandboxRequest`) the process execs bwrap; with the fork backend it stays as a thin
    waiter around the same namespace setup as an action's. Raises :class:`SandboxRequestError`,
    before anything irreversible, for a bad root, bind or working directory; a program the
    root lacks exits 127 with the :data:`NOT_IN_TOOLCHAIN` message, a failed setup 125.
    """
    if not argv:
        raise SandboxRequestError("argv is empty")
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise SandboxRequestError(f"root {root} is not a directory")
    if not os.path.isabs(cwd):
        raise SandboxRequestError(f"working directory {cwd!r} must be an absolute path")
    real_binds = _run_binds(binds)
    cwd = os.path.normpath(cwd)
    env = {**env, "PWD": cwd}
    if backend == "auto":
        backend = os.environ.get("PBUILD_SANDBOX_BACKEND") or ("bwrap" if _bwrap() else "fork")
    binary = _bwrap() if backend == "bwrap" else None
    if backend not in ("bwrap", "fork") or (backend == "bwrap" and binary is None):
        raise SandboxRequestError(
            f"sandbox backend {backend!r} is unknown or not installed (bwrap, fork or auto)"
        )
    if binary is not None:
        args = _root_args(real_root, set(), real_binds)  # may refuse a bind through a link of the tree
        command = _run_command(real_root, argv[0], env, real_binds, cwd)
        if command is None:
            os.write(2, _not_found_message(argv[0], on_toolchain=True).encode())
            os._exit(127)
        uid, gid = os.geteuid(), os.getegid()
        bwrap = [binary, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try",
                 "--uid", str(uid), "--gid", str(gid), *args, "--dev-bind", "/dev", "/dev",
                 "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run"]  # fmt: skip
        for bind in real_binds:
            bwrap += ["--bind", bind, bind]
        bwrap += ["--remount-ro", "/", "--chdir", cwd, "--", command, *argv[1:]]
        os.execve(binary, bwrap, env)
    p = _run_plan(real_root, argv, real_binds, cwd)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # the terminal's go to the program; we wait for it
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = _SETUP_FAILED
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
        os.write(2, f"pbuild: cannot run {argv[0]} on {root}: {message}\n".encode())
        os._exit(_SETUP_FAILED)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)
