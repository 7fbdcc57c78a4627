"""Thin, checked wrappers over the Linux syscalls the sandbox and the launcher need.

Python's standard library has ``os.unshare``/``os.setns`` only from 3.12 and nothing for
``mount``, ``pivot_root``, ``mount_setattr`` or ``capset``, so these go through ctypes. Every
wrapper raises :class:`LinuxError` (an ``OSError``) whose message names the operation, the
path(s) and the errno, e.g. ``mount(tmpfs -> /x/tmp, type tmpfs): [Errno 1] EPERM: Operation
not permitted``: a failed namespace setup must say exactly which step failed.

Nothing here allocates much or imports anything lazily, because these functions run in a
freshly forked child of a possibly multi-threaded process (see ``fork.py``).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# Syscall numbers differ per architecture for the old calls; the new ones (>= 424) are shared.
_ARCH_NR: dict[str, dict[str, int]] = {
    "x86_64": {"pivot_root": 155, "setns": 308, "unshare": 272, "capset": 126, "capget": 125},
    "aarch64": {"pivot_root": 41, "setns": 268, "unshare": 97, "capset": 91, "capget": 90},
}
_NR = _ARCH_NR.get(os.uname().machine, _ARCH_NR["x86_64"])
NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
NR_CLOSE_RANGE = 436
NR_MOUNT_SETATTR = 442

# clone / unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2

# mount_setattr(2)
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# prctl(2)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_CHILD_SUBREAPER = 36

CLOSE_RANGE_CLOEXEC = 1 << 2
CAP_LAST_CAP_FALLBACK = 40


class LinuxError(OSError):
    """A syscall failed; ``str()`` names the operation, the path(s) and the errno."""

    def __init__(self, err: int, operation: str) -> None:
        name = errno.errorcode.get(err, str(err))
        super().__init__(err, f"{operation}: [Errno {err}] {name}: {os.strerror(err)}")
        self.operation = operation


def _check(result: int, operation: str | Callable[[], str]) -> int:
    # ``operation`` may be a lambda so that the message is only formatted on failure: these
    # calls run dozens of times per sandboxed action.
    if result < 0:
        raise LinuxError(ctypes.get_errno(), operation if isinstance(operation, str) else operation())
    return result


def _b(path: str | bytes | None) -> bytes | None:
    if path is None or isinstance(path, bytes):
        return path
    return os.fsencode(path)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``CLONE_NEW*`` flags)."""
    _check(_libc.unshare(ctypes.c_int(flags)), lambda: f"unshare(flags={flags:#x})")


def setns(fd: int, nstype: int = 0, what: str = "") -> None:
    """Join the namespace that ``fd`` (from ``/proc/PID/ns/*`` or a pidfd) refers to."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), lambda: f"setns({what or fd})")


def mount(
    source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None
) -> None:
    """mount(2); ``source`` may be ``/proc/self/fd/N`` to bind an already opened directory."""
    result = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(result, lambda: f"mount({source or 'none'} -> {target}, type {fstype or '-'}, flags {flags:#x})")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), lambda: f"umount2({target})")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _syscall(ctypes.c_long(_NR["pivot_root"]), _b(new_root), _b(put_old))
    _check(result, lambda: f"pivot_root({new_root}, {put_old})")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int, attr_clr: int = 0, recursive: bool = True) -> None:
    """Change mount flags, recursively for a whole subtree (Linux >= 5.12)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    result = _syscall(
        ctypes.c_long(NR_MOUNT_SETATTR),
        ctypes.c_int(-100),  # AT_FDCWD
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, lambda: f"mount_setattr({path}, set={attr_set:#x}, clear={attr_clr:#x})")


def close_range(first: int, last: int = 0xFFFFFFFF, cloexec: bool = False) -> None:
    """Close (or mark close-on-exec) every fd in ``[first, last]`` in one syscall."""
    flags = CLOSE_RANGE_CLOEXEC if cloexec else 0
    result = _syscall(
        ctypes.c_long(NR_CLOSE_RANGE), ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)
    )
    _check(result, lambda: f"close_range({first}, {last})")


def keep_only_fds(keep: list[int]) -> None:
    """Close every fd >= 3 except ``keep``: fds another thread opened around our fork would
    otherwise stay open for the child's whole life (e.g. its error pipe, delaying its EOF)."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            if fd > low:
                close_range(low, fd - 1)
            low = fd + 1
    close_range(low)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(arg4),
        ctypes.c_ulong(arg5),
    )
    return _check(result, lambda: f"prctl(option={option}, {arg2})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), lambda: f"sethostname({name})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(
        _CapData(effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF),
        _CapData(effective >> 32, permitted >> 32, inheritable >> 32),
    )
    result = _syscall(ctypes.c_long(_NR["capset"]), ctypes.byref(header), data)
    _check(result, "capset")


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return CAP_LAST_CAP_FALLBACK


def drop_bounding_set(keep: int, last: int) -> None:
    """Drop every capability not in the ``keep`` mask from the bounding set."""
    for cap in range(last + 1):
        if not keep & (1 << cap):
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except LinuxError as e:
                if e.errno != errno.EINVAL:  # a capability the kernel does not have
                    raise


class _IfReq(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 16), ("flags", ctypes.c_short), ("pad", ctypes.c_char * 22)]


def set_loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS).

    Plain ctypes rather than the socket and fcntl modules: importing those in the forked child
    costs several milliseconds per sandboxed action.
    """
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    fd = _check(
        _libc.socket(ctypes.c_int(2), ctypes.c_int(2 | 0o2000000), ctypes.c_int(0)), "socket(AF_INET)"
    )
    try:
        req = _IfReq(b"lo", 0)
        _check(
            _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(siocgifflags), ctypes.byref(req)),
            "ioctl(SIOCGIFFLAGS, lo)",
        )
        req.flags |= iff_up
        _check(
            _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(siocsifflags), ctypes.byref(req)),
            "ioctl(SIOCSIFFLAGS, lo up)",
        )
    finally:
        os.close(fd)


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` with one write(2), as the kernel's ``/proc`` map files require."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LinuxError(e.errno or errno.EIO, f"open({path})") from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise LinuxError(e.errno or errno.EIO, f"write({path}, {data!r})") from None
    finally:
        os.close(fd)


def write_id_maps(pid: str, uid_map: str, gid_map: str, deny_setgroups: bool = True) -> None:
    """Write ``/proc/PID/{setgroups,uid_map,gid_map}`` (``pid`` may be ``self``)."""
    if deny_setgroups:
        write_file(f"/proc/{pid}/setgroups", b"deny")
    write_file(f"/proc/{pid}/uid_map", uid_map.encode())
    write_file(f"/proc/{pid}/gid_map", gid_map.encode())
