"""The bwrap backend (bubblewrap, Debian ``bubblewrap``; the default when installed): the same
:class:`~pbuild.tools.sandbox.plan.Plan` as the fork backend's, translated into bwrap's command
line by :func:`command_line`, so the mount plan is written once.

Measured with ``bench/bench_sandbox.py`` on the 2-core CI machine it costs about 3-5 ms of CPU
per action against 14-24 ms for the fork backend, and a lower wall time whenever the machine is
busy (which it is under ``--jobs N``). It is the well-kept tool for exactly this job, execs from
``subprocess`` without copying our address space, and is the one most people audit. It dies
with its caller (``--die-with-parent``) and runs its own PID 1.

What the translation relies on (each checked; an operation bwrap cannot express raises
:class:`NotExpressible` naming it):

- bwrap builds the new root on its own tmpfs and reaches bind sources through the old root, so
  the plan's root tmpfs, its ``MS_PRIVATE`` and its ``OpenPath`` slots need no argument;
- every bwrap bind is recursive and nosuid, and nodev unless it is a ``--dev-bind``; read-only is
  a property of the bind itself (``--ro-bind``). So a bind's flags are followed through the
  plan's ``SetAttr`` operations (and inherited by a bind of a path below it, as the kernel does)
  and the bind is spelled by the flags it ends with;
- a tmpfs is always nosuid and nodev; ``--remount-ro`` makes one mount read-only;
- ``--dev`` is bwrap's own minimal ``/dev`` for a :class:`~nsops.DevTree`: the same devices and
  links, plus a devpts instance behind ``/dev/pts`` with ``/dev/ptmx`` and a ``/dev/core`` link.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import NoReturn

from pbuild.tools.sandbox import linux, nsops
from pbuild.tools.sandbox.plan import Plan, plan, resolve_command
from pbuild.tools.sandbox.request import (
    SETUP_FAILED,
    SandboxRequest,
    SandboxRequestError,
    SandboxResult,
    not_found_message,
)

_path: list[str | None] = []
_BWRAP_DEVICES = frozenset({"null", "zero", "full", "random", "urandom", "tty"})
"""The devices bwrap's ``--dev`` makes."""
_NAMESPACES = (
    (linux.CLONE_NEWUSER, "--unshare-user"),
    (linux.CLONE_NEWPID, "--unshare-pid"),
    (linux.CLONE_NEWIPC, "--unshare-ipc"),
    (linux.CLONE_NEWUTS, "--unshare-uts"),
    (linux.CLONE_NEWNET, "--unshare-net"),
    (linux.CLONE_NEWCGROUP, "--unshare-cgroup-try"),
)
_NOSUID_NODEV = linux.MS_NOSUID | linux.MS_NODEV
_ATTRS = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV


def find_bwrap() -> str | None:
    """The bwrap binary on the PATH (looked up once), or None."""
    if not _path:
        import shutil

        _path.append(shutil.which("bwrap"))
    return _path[0]


class NotExpressible(SandboxRequestError):
    """A plan operation has no bwrap equivalent (a bug in the plan, not in the action)."""

    def __init__(self, op: object, why: str) -> None:
        super().__init__(f"bwrap cannot express {op!r}: {why}")


@dataclass
class _Bind:
    """A bind made so far: where its option word is in the argv, and the flags it has now."""

    index: int
    dest: str
    host: str
    read_only: bool = False
    nodev: bool = False


def _below(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top + "/")


def translate(p: Plan) -> list[str]:
    """bwrap's options for ``p``: namespaces, ids and one or more options per operation (no
    binary, no process options, no command)."""
    new = p.new_root
    if not p.ops or p.ops[-1] != nsops.PivotRoot(new):
        raise NotExpressible(p.ops[-1:], f"bwrap runs its program in a new root: end with PivotRoot({new!r})")
    if not p.namespaces & linux.CLONE_NEWUSER or not p.namespaces & linux.CLONE_NEWNS:
        raise NotExpressible(p.namespaces, "bwrap needs new user and mount namespaces")
    args: list[str] = []
    rest = p.namespaces & ~(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
    for flag, option in _NAMESPACES:
        if p.namespaces & flag:
            args.append(option)
            rest &= ~flag
    if rest:
        raise NotExpressible(rest, "unknown namespace flags")
    args += _ids(p)

    def inside(op: object, path: str) -> str:
        if path == new:
            return "/"
        if path.startswith(new + "/"):
            return path[len(new) :]
        raise NotExpressible(op, f"{path} is outside the new root {new}")

    slots: dict[str, str] = {}
    binds: list[_Bind] = []
    tmpfs: dict[str, bool] = {}  # each tmpfs (the new root's "/" too): is it read-only yet
    root_made = False
    for op in p.ops[:-1]:
        if isinstance(op, nsops.OpenPath):
            slots[op.slot.name] = op.path  # bwrap reaches it through the old root
        elif isinstance(op, nsops.Mount):
            if op.root:
                raise NotExpressible(op, "bwrap resolves no target inside another root")
            dest = inside(op, op.target)
            if dest == "/":
                own_root = op.fstype == "tmpfs" and op.flags == _NOSUID_NODEV and op.data == "mode=0755"
                if own_root and not root_made:
                    root_made = True  # bwrap's own new root is such a tmpfs
                    tmpfs["/"] = False
                elif op.source is None and op.flags == linux.MS_PRIVATE and root_made:
                    pass  # bwrap's mounts propagate nothing back to the host
                else:
                    raise NotExpressible(op, "bwrap's new root is its own tmpfs")
                continue
            if not root_made:
                raise NotExpressible(op, "a mount before the new root's tmpfs")
            if op.flags & linux.MS_BIND:
                binds.append(_bind(op, dest, slots, binds, new, len(args)))
                args += ["--dev-bind", binds[-1].host, dest]  # spelled by its final flags below
            elif op.fstype == "proc":
                if op.flags != linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC or op.data:
                    raise NotExpressible(op, "bwrap mounts proc nosuid, nodev, noexec, without options")
                args += ["--proc", dest]
            elif op.fstype == "tmpfs":
                if op.flags & ~linux.MS_RDONLY != _NOSUID_NODEV:
                    raise NotExpressible(op, "bwrap mounts every tmpfs nosuid and nodev, nothing else")
                args += [*_tmpfs_options(op), "--tmpfs", dest]
                tmpfs[dest] = bool(op.flags & linux.MS_RDONLY)
                if tmpfs[dest]:
                    args += ["--remount-ro", dest]
            else:
                raise NotExpressible(op, "bwrap mounts only binds, proc and tmpfs")
        elif isinstance(op, nsops.SetAttr):
            if op.root:
                raise NotExpressible(op, "bwrap resolves no target inside another root")
            args += _set_attr(op, inside(op, op.target), binds, tmpfs)
        elif isinstance(op, nsops.MakeDir):
            if op.root:
                raise NotExpressible(op, "bwrap resolves no path inside another root")
            perms = ["--perms", f"{op.mode:04o}"] if op.mode != 0o755 else []
            args += [*perms, "--dir", inside(op, op.path)]
        elif isinstance(op, nsops.Symlink):
            if op.root:
                raise NotExpressible(op, "bwrap resolves no path inside another root")
            args += ["--symlink", op.target, inside(op, op.path)]
        elif isinstance(op, nsops.DevTree):
            if not set(op.devices) <= _BWRAP_DEVICES:
                raise NotExpressible(op, f"bwrap's --dev makes only {sorted(_BWRAP_DEVICES)}")
            args += ["--dev", inside(op, op.path)]
        elif isinstance(op, nsops.SetHostname):
            if not p.namespaces & linux.CLONE_NEWUTS:
                raise NotExpressible(op, "a hostname needs a new UTS namespace")
            args += ["--hostname", op.name]
        elif isinstance(op, nsops.LoopbackUp):
            if not p.namespaces & linux.CLONE_NEWNET:
                raise NotExpressible(op, "bwrap brings lo up only in its new network namespace")
        else:  # MakeFile, Chdir, Mask, ReadOnly, a PivotRoot before the end
            raise NotExpressible(op, "no bwrap option does this")
    for bind in binds:
        if bind.read_only and not bind.nodev:
            raise NotExpressible(bind.dest, "bwrap has no read-only bind that keeps devices")
        args[bind.index] = "--ro-bind" if bind.read_only else "--bind" if bind.nodev else "--dev-bind"
    return args


def _ids(p: Plan) -> list[str]:
    """``--uid``/``--gid``: bwrap maps one id inside to the caller's own."""
    if p.id_maps is None:
        return ["--uid", "0", "--gid", "0"]
    ids = []
    for line, own in zip(p.id_maps, (os.geteuid(), os.getegid()), strict=True):
        fields = line.split()
        if len(fields) != 3 or fields[1:] != [str(own), "1"]:
            raise NotExpressible(line, "bwrap maps one id inside to the caller's own id")
        ids.append(fields[0])
    return ["--uid", ids[0], "--gid", ids[1]]


def _bind(
    op: nsops.Mount, dest: str, slots: dict[str, str], binds: list[_Bind], new: str, index: int
) -> _Bind:
    """The host source of a bind, and the flags it starts with."""
    if op.flags & ~(linux.MS_BIND | linux.MS_REC) or op.fstype or op.data:
        raise NotExpressible(op, "a bind takes its flags from SetAttr, not from mount(2)")
    source = op.source
    if isinstance(source, nsops.Slot):
        if source.name not in slots:
            raise NotExpressible(op, f"slot {source.name!r} was never opened")
        host = os.path.join(slots[source.name], source.below) if source.below else slots[source.name]
        made = _Bind(index, dest, host)
    elif source is not None and (source == new or source.startswith(new + "/")):
        # A path of the new tree: the mount that shows it now, whose flags the new bind inherits.
        rel = source[len(new) :] or "/"
        covering = [b for b in binds if _below(rel, b.dest)]
        if not covering:
            raise NotExpressible(op, f"{rel} is on no bind of the new root")
        below = max(covering, key=lambda b: len(b.dest))
        host = below.host + rel[len(below.dest) :] if below.dest != "/" else below.host + rel
        made = _Bind(index, dest, host, below.read_only, below.nodev)
    elif source is not None and source.startswith("/"):
        made = _Bind(index, dest, source)
    else:
        raise NotExpressible(op, "a bind needs a source")
    if not op.flags & linux.MS_REC and os.path.isdir(made.host):
        raise NotExpressible(op, "bwrap binds a directory with the mounts below it (add MS_REC)")
    return made


def _tmpfs_options(op: nsops.Mount) -> list[str]:
    options: list[str] = []
    for option in (op.data or "").split(","):
        key, _, value = option.partition("=")
        if key == "mode":
            if int(value, 8) != 0o755:  # bwrap's default
                options += ["--perms", f"{int(value, 8):04o}"]
        elif key == "size":
            scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1:].lower(), 1)
            options += ["--size", str(int(value.rstrip("kKmMgG")) * scale)]
        elif key:
            raise NotExpressible(op, f"bwrap's --tmpfs takes no option {key!r}")
    return options


def _set_attr(op: nsops.SetAttr, dest: str, binds: list[_Bind], tmpfs: dict[str, bool]) -> list[str]:
    """Follow ``op`` on the binds it covers; a tmpfs it makes read-only gets ``--remount-ro``."""
    if op.attr_set & ~_ATTRS or op.attr_clear & ~linux.MOUNT_ATTR_RDONLY:
        raise NotExpressible(op, "bwrap sets only read-only, nosuid and nodev, and clears only read-only")
    read_only, nodev = op.attr_set & linux.MOUNT_ATTR_RDONLY, op.attr_set & linux.MOUNT_ATTR_NODEV
    covered = [b for b in binds if (_below(b.dest, dest) if op.recursive else b.dest == dest)]
    if read_only and not op.recursive and covered:
        raise NotExpressible(op, "bwrap makes a bind read-only with the mounts below it")
    mounts = [t for t in tmpfs if (_below(t, dest) if op.recursive else t == dest)]
    if op.attr_clear and any(tmpfs[t] for t in mounts):
        raise NotExpressible(op, "bwrap cannot make a read-only tmpfs writable again")
    for bind in covered:
        bind.read_only = bool(read_only) or (bind.read_only and not op.attr_clear)
        bind.nodev = bind.nodev or bool(nodev)
    remount = [t for t in mounts if read_only and not tmpfs[t]]
    for t in remount:
        tmpfs[t] = True
    return [arg for t in remount for arg in ("--remount-ro", t)]


def command_line(p: Plan, binary: str, command: str) -> list[str]:
    """The bwrap command line that runs plan ``p`` (``command``: argv[0] resolved inside)."""
    process = [] if p.interactive else ["--die-with-parent", "--new-session"]
    return [binary, *process, *translate(p), "--chdir", p.workdir, "--", command, *p.argv[1:]]


def run_bwrap(request: SandboxRequest, binary: str) -> SandboxResult:
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
        p = plan(request)
        command, missing = resolve_command(request)
        argv = command_line(p, binary, command or request.argv[0])
    except (SandboxRequestError, OSError) as e:
        return SandboxResult(
            SETUP_FAILED, time.perf_counter() - start, error=f"sandbox request refused: {e}"
        )
    try:
        stdout = open(request.stdout_path, "wb")  # noqa: SIM115 - closed below
        stderr = stdout if request.stderr_path == request.stdout_path else open(request.stderr_path, "wb")  # noqa: SIM115
    except OSError as e:
        return SandboxResult(SETUP_FAILED, time.perf_counter() - start, error=f"sandbox: {e}")
    try:
        if command is None:
            if missing == 127:
                message = not_found_message(request.argv[0], on_toolchain=request.root is not None)
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
                SETUP_FAILED, time.perf_counter() - start, error=f"cannot start {binary}: {e}"
            )
        finally:
            os.close(status_w)
        if request.on_start is not None:
            request.on_start(process.pid)
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
                SETUP_FAILED,
                duration,
                error="sandbox setup failed: " + (lines[-1] if lines else f"bwrap exited {code}"),
            )
        return SandboxResult(code, duration)
    finally:
        stdout.close()
        if stderr is not stdout:
            stderr.close()


def exec_bwrap(p: Plan, binary: str, command: str, env: dict[str, str]) -> NoReturn:
    """Become bwrap running the interactive plan ``p`` (``exec_on_root``)."""
    os.execve(binary, command_line(p, binary, command), env)
