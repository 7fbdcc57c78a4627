"""The sandbox's setup as data: a request becomes one :class:`Plan` (namespaces, id maps and the
list of ``nsops`` operations that builds the new root), which both backends run: the fork
backend applies it with ``nsops.apply``, the bwrap backend translates it into bwrap's arguments
(``bwrap.py``). So the two cannot drift apart: one plan, two interpreters.

The layout, whichever root the action sees: a fresh tmpfs receives the new root; on it each
top-level entry of the root (the host's ``/`` or a toolchain tree) is bound (or linked) one at a
time, beside the sandbox's own mounts (``/proc``, ``/dev``, ``/tmp``, ``/run``, ``/execroot``),
so a read-only tree need not contain their mount points and nothing is created on the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pbuild.tools.sandbox import linux, nsops
from pbuild.tools.sandbox.request import DEFAULT_PATH, EXEC_ROOT, SandboxRequest, SandboxRequestError

NEW_ROOT = "/tmp"
"""An existing host directory that receives the new root's tmpfs (it is shadowed, so sources
below it are opened first and reached through a :class:`nsops.Slot`)."""
OWN_MOUNTS = ("proc", "dev", "tmp", "run", EXEC_ROOT.lstrip("/"))
RUN_OWN_MOUNTS = ("proc", "dev", "tmp", "run")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_RO = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV


@dataclass(frozen=True)
class Plan:
    """Everything a backend needs to set up one sandbox and start its program."""

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
    new_root: str = NEW_ROOT


def _writable_dir(exec_root: str, writable: str) -> str:
    """The relative path of a writable dir, checked to be a real directory of the exec root:
    through a symlink, a bind would make a directory outside it writable."""
    rel = inside(writable, "writable dir")
    full = os.path.join(exec_root, rel)
    if not os.path.isdir(full):
        raise SandboxRequestError(f"writable dir {writable!r} does not exist under the exec root {exec_root}")
    if os.path.realpath(full) != os.path.normpath(full):
        raise SandboxRequestError(
            f"writable dir {writable!r} goes through a symlink; it must be a real directory"
        )
    return rel


def inside(relative: str, what: str) -> str:
    """``relative`` normalized, checked to stay inside the exec root ("" for the root itself)."""
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
    bound one at a time so that our own mounts can be made beside them on a fresh tmpfs. At the
    ``top``, entries of those names are left out, as are regular files (a root filesystem keeps
    nothing there that a program needs). An empty directory (``/srv``, ``/media``, ``lost+found``
    to us) becomes just an empty directory: each bind costs bwrap a parse of the mount table.
    Cached per source while it and its directories are unchanged (a stat each, against ~0.3 ms
    for listing them; a mount on one changes its inode)."""
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
        if top and name in OWN_MOUNTS:
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


def _root_layout(source: str, opened: Sequence[str] = (), hidden: Sequence[str] = ()) -> list[_RootEntry]:
    """The entries that make ``source`` the ``/`` (see :func:`_root_entries`). ``opened`` are
    absolute paths inside where host directories will be bound (``exec_on_root``): each directory
    of the tree on the way there is made on the tmpfs and laid out entry by entry instead of being
    bound whole, so that the mount point can be made without writing to the tree. A ``hidden``
    top-level directory is made empty instead of bound (its tmpfs comes later anyway)."""
    wanted = [path.strip("/") for path in opened]
    hidden_top = {path.strip("/") for path in hidden}
    layout: list[_RootEntry] = []

    def lay_out(prefix: str) -> None:
        for entry in _root_entries(os.path.join(source, prefix), top=not prefix):
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            below = [w for w in wanted if w == rel or w.startswith(rel + "/")]
            if entry.kind == "dir" and rel in hidden_top:
                layout.append(_RootEntry(rel, "empty"))
            elif not below or entry.kind == "empty":
                layout.append(_RootEntry(rel, entry.kind, entry.target))
            elif entry.kind == "dir":
                layout.append(_RootEntry(rel, "empty"))
                if rel not in wanted:  # a bind on rel itself covers all of it
                    lay_out(rel)
            else:
                raise SandboxRequestError(f"cannot bind /{below[0]}: /{rel} is a {entry.kind} in the root")

    lay_out("")
    return layout


def _root_ops(
    new: str, source: str, opened: Sequence[str] = (), hidden: Sequence[str] = ()
) -> list[nsops.Op]:
    """``source`` as ``/`` below ``new`` (see :func:`_root_layout`). Sources are reached through
    the directory opened before the new root's tmpfs shadowed it (a toolchain tree may lie below
    ``/tmp``)."""
    ops: list[nsops.Op] = []
    for entry in _root_layout(source, opened, hidden):
        path = f"{new}/{entry.name}"
        if entry.kind == "link":
            ops.append(nsops.Symlink(entry.target, path))
        elif entry.kind == "file":
            ops.append(nsops.Mount(nsops.Slot("root", entry.name), path, None, linux.MS_BIND, create="file"))
        elif entry.kind == "dir":
            ops.append(
                nsops.Mount(
                    nsops.Slot("root", entry.name), path, None, linux.MS_BIND | linux.MS_REC, create="dir"
                )
            )
        else:
            ops.append(nsops.MakeDir(path))
    return ops


def root_of(request: SandboxRequest) -> str:
    """The directory the action sees as ``/``: the host's, or the request's toolchain tree."""
    if request.root is None:
        return "/"
    root = os.path.realpath(request.root)
    if not os.path.isdir(root):
        raise SandboxRequestError(f"root {request.root} is not a directory")
    return root


def hidden_paths(request: SandboxRequest) -> list[str]:
    """The host paths to mask; none on a toolchain root, where nothing of the host is visible."""
    return [] if request.root is not None else sorted(set(request.hide_paths))


def _masked(request: SandboxRequest) -> list[tuple[str, bool]]:
    """(real path, is a directory) of each hidden path that exists and can be hidden."""
    masked = []
    for hidden in hidden_paths(request):
        real = os.path.realpath(hidden)
        top = real.strip("/").split("/", 1)[0]
        if real == "/" or top in OWN_MOUNTS:
            continue  # "/" cannot be hidden; the own mounts are fresh and hold nothing of the host
        try:
            mode = os.stat(real).st_mode
        except OSError:
            continue  # nothing there, nothing to hide
        masked.append((real, stat.S_ISDIR(mode)))
    return masked


def plan(request: SandboxRequest) -> Plan:
    """Turn a request into the setup both backends run (pure, no syscalls except reading the
    root's entries and checking the paths it is given)."""
    if not request.argv:
        raise SandboxRequestError("argv is empty")
    exec_root = os.path.realpath(request.exec_root)
    if not os.path.isdir(exec_root):
        raise SandboxRequestError(f"exec root {request.exec_root} is not a directory")
    root = root_of(request)
    new = NEW_ROOT
    masked = _masked(request)
    ops: list[nsops.Op] = [
        # The exec root and the root may lie below NEW_ROOT, which the next mount shadows: open
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
    ops += [nsops.MakeDir(f"{new}/{name}") for name in OWN_MOUNTS]
    ops += _root_ops(new, root, hidden=[real for real, is_dir in masked if is_dir])
    for real, is_dir in masked:
        if is_dir:
            flags = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
            ops.append(nsops.Mount("tmpfs", new + real, "tmpfs", flags, "size=4k,mode=0755"))
        else:
            ops.append(nsops.Mount("/dev/null", new + real, None, linux.MS_BIND))
    ops += [
        nsops.SetAttr(new, _RO),
        nsops.DevTree(f"{new}/dev", tuple(dev for dev in DEVICES if os.path.exists(f"/dev/{dev}"))),
        nsops.Mount("proc", f"{new}/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC),
        nsops.Mount("tmpfs", f"{new}/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
        nsops.Mount("tmpfs", f"{new}/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        nsops.Mount(nsops.Slot("exec"), new + EXEC_ROOT, None, linux.MS_BIND | linux.MS_REC),
        nsops.SetAttr(new + EXEC_ROOT, _RO),
    ]
    for writable in sorted(set(request.writable_dirs)):
        rel = _writable_dir(exec_root, writable)
        target = f"{new}{EXEC_ROOT}/{rel}" if rel else new + EXEC_ROOT
        # A bind of the directory onto itself is a new mount; it inherits read-only from the
        # exec root's mount, which we set ourselves and so may clear again on this one mount.
        ops.append(nsops.Mount(target, target, None, linux.MS_BIND | linux.MS_REC))
        ops.append(nsops.SetAttr(target, 0, linux.MOUNT_ATTR_RDONLY, recursive=False))
    ops.append(nsops.SetHostname(request.hostname))
    namespaces = (
        linux.CLONE_NEWUSER
        | linux.CLONE_NEWNS
        | linux.CLONE_NEWPID
        | linux.CLONE_NEWIPC
        | linux.CLONE_NEWUTS
        | linux.CLONE_NEWCGROUP
    )
    if not request.network:
        namespaces |= linux.CLONE_NEWNET
        ops.append(nsops.LoopbackUp())
    ops.append(nsops.PivotRoot(new))
    workdir = inside(request.workdir, "workdir")
    return Plan(
        ops=tuple(ops),
        workdir=f"{EXEC_ROOT}/{workdir}" if workdir else EXEC_ROOT,
        namespaces=namespaces,
        argv=tuple(request.argv),
        on_toolchain=request.root is not None,
    )


def _host_view(path: str, exec_root: str, workdir: str, hidden: list[str], root: str | None) -> str | None:
    """Where the file the action would see at ``path`` lies on the host (None: not visible).
    On a toolchain ``root``, links are followed as if it were ``/``, so never to the host."""
    if not path.startswith("/"):
        path = os.path.join(EXEC_ROOT, workdir, path)
    path = os.path.normpath(path)
    if path == EXEC_ROOT or path.startswith(EXEC_ROOT + "/"):
        return exec_root + path[len(EXEC_ROOT) :]
    top = path.strip("/").split("/", 1)[0]
    if top in OWN_MOUNTS or any(path == h or path.startswith(h + "/") for h in hidden):
        return None
    if root is None:
        return path
    try:
        resolved = nsops.resolve_in_root(root, path)
    except OSError:
        return None
    inside_root = os.path.relpath(resolved, root).split("/", 1)[0]
    # A link into /tmp, /proc... of the tree: those are the sandbox's own, empty at the start.
    return None if inside_root in OWN_MOUNTS else resolved


def resolve_command(request: SandboxRequest) -> tuple[str | None, int]:
    """argv[0] as the action would find it through its PATH: (path inside, 0), or (None, 127/126).

    For a backend that cannot report a missing command itself (bwrap exits 1 for any failure)."""
    exec_root = os.path.realpath(request.exec_root)
    workdir = inside(request.workdir, "workdir")
    hidden = [os.path.realpath(h) for h in hidden_paths(request)]
    root = None if request.root is None else root_of(request)
    name = request.argv[0]
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in request.env.get("PATH", DEFAULT_PATH).split(":")
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


# --- a program on a toolchain root, interactively (pbuild run) -----------------------------------


def check_binds(binds: Sequence[str]) -> list[str]:
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


def command_on_root(root: str, name: str, env: Mapping[str, str], binds: list[str], cwd: str) -> str | None:
    """argv[0] as the program on ``root`` would find it through its PATH (None: not there)."""
    candidates = [name] if "/" in name else [
        os.path.join(d or ".", name) for d in env.get("PATH", DEFAULT_PATH).split(":")
    ]  # fmt: skip
    for candidate in candidates:
        path = os.path.normpath(os.path.join(cwd, candidate))
        bound = [b for b in binds if path == b or path.startswith(b + "/")]
        if bound:
            host: str | None = path
        elif path.strip("/").split("/", 1)[0] in RUN_OWN_MOUNTS:
            host = None
        else:
            try:
                host = nsops.resolve_in_root(root, path)
            except OSError:
                host = None
        if host is not None and os.path.isfile(host) and os.access(host, os.X_OK):
            return candidate
    return None


def plan_on_root(root: str, argv: Sequence[str], binds: list[str], cwd: str) -> Plan:
    """The setup for ``exec_on_root`` (see :func:`plan` for the pattern): the toolchain tree as
    ``/``, the host's ``/dev``, and ``binds`` (checked by :func:`check_binds`) writable at their
    own paths, as the caller's own uid and gid."""
    new = NEW_ROOT
    ops: list[nsops.Op] = [nsops.OpenPath(root, nsops.Slot("root"))]
    ops += [nsops.OpenPath(b, nsops.Slot(f"bind{i}")) for i, b in enumerate(binds)]
    ops += [
        nsops.Mount("tmpfs", new, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        nsops.Mount(None, new, None, linux.MS_PRIVATE),
    ]
    ops += [nsops.MakeDir(f"{new}/{name}") for name in RUN_OWN_MOUNTS]
    ops += _root_ops(new, root, binds)

    def mount_points(under_own: bool) -> list[nsops.Op]:
        made: list[nsops.Op] = []
        for bind in binds:
            parts = bind.strip("/").split("/")
            if (parts[0] in RUN_OWN_MOUNTS) == under_own:
                made += [nsops.MakeDir(new + "/" + "/".join(parts[:n])) for n in range(1, len(parts) + 1)]
        return made

    ops += mount_points(under_own=False)
    ops.append(nsops.SetAttr(new, _RO))
    ops += [
        nsops.Mount("/dev", f"{new}/dev", None, linux.MS_BIND | linux.MS_REC),  # a terminal works
        nsops.Mount("proc", f"{new}/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC),
        nsops.Mount("tmpfs", f"{new}/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
        nsops.Mount("tmpfs", f"{new}/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
    ]
    ops += mount_points(under_own=True)
    for i, bind in enumerate(binds):
        ops.append(nsops.Mount(nsops.Slot(f"bind{i}"), new + bind, None, linux.MS_BIND | linux.MS_REC))
        # Writable, but no set-uid programs or devices from the host's directories.
        ops.append(nsops.SetAttr(new + bind, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV))
    ops.append(nsops.PivotRoot(new))
    uid, gid = os.geteuid(), os.getegid()
    return Plan(
        ops=tuple(ops),
        workdir=cwd,
        namespaces=linux.CLONE_NEWUSER
        | linux.CLONE_NEWNS
        | linux.CLONE_NEWPID
        | linux.CLONE_NEWIPC
        | linux.CLONE_NEWCGROUP,
        argv=tuple(argv),
        on_toolchain=True,
        id_maps=(f"{uid} {uid} 1\n", f"{gid} {gid} 1\n"),
        interactive=True,
    )
