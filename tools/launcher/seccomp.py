"""The container's syscall filter (seccomp), in three steps: two in the launcher before it
forks, the last in the container.

1. :func:`choose_policy` reads ``--security-opt``: the default profile
   (:mod:`.seccomp_default`), a profile file in Docker's JSON layout (``seccomp=FILE``) or none
   (``seccomp=unconfined``).
2. :func:`build_program` turns it, for this container's capabilities and this host, into a BPF
   program: from a cache, or compiled with libseccomp by :mod:`.seccomp_profile`.
3. :func:`install` loads that program with one ``prctl(PR_SET_SECCOMP)``, the last step before
   ``execve`` (after no_new_privs, which the kernel requires of an unprivileged filter, and
   after every mount, which the filter would refuse).

Building the program before the fork keeps libseccomp and its failures out of the container's
setup: a missing library or a bad profile is a message and exit 125 before anything started,
never a container that runs unconfined. libseccomp is loaded with ctypes: no build step and no
Python binding package, only Debian's ``libseccomp2``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import stat
import zlib
from typing import Any, NamedTuple

from pbuild.lib import atomicio
from pbuild.lib.determinism import canonical_json
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.sandbox import linux

_LIBRARY = "libseccomp.so.2"
_PACKAGE_HINT = (
    "install libseccomp (Debian and Ubuntu: apt-get install libseccomp2; Fedora: dnf install "
    "libseccomp), or run without a filter with --security-opt seccomp=unconfined"
)

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_CACHE_FORMAT = 1  # bump when compile_profile changes what it makes of a profile


class Policy(NamedTuple):
    """What ``--security-opt seccomp=`` chose: ``source`` is ``default``, ``unconfined`` or the
    profile file, ``profile`` its JSON (None when unconfined)."""

    source: str
    profile: dict[str, Any] | None

    def record(self) -> str | dict[str, Any]:
        """What the state file keeps, so that ``pbuild exec`` applies the same filter."""
        return self.source if self.source in ("default", "unconfined") else self.profile or {}


def read_profile(path: str) -> Any:
    """The JSON of a profile file (checked by :func:`parse_profile`)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise LauncherError(f"cannot read seccomp profile {path}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LauncherError(
            f"{path}:{e.lineno}:{e.colno}: invalid JSON in seccomp profile: {e.msg}"
        ) from None


def choose_policy(security_opts: tuple[str, ...]) -> Policy:
    """Interpret ``--security-opt`` values as Docker does for the ones the launcher has:
    ``seccomp=unconfined``, ``seccomp=FILE`` and ``no-new-privileges`` (always on here)."""
    choice = "default"
    for option in security_opts:
        key, sep, value = option.partition("=")
        if not sep:
            key, sep, value = option.partition(":")  # Docker's older spelling, seccomp:FILE
        if key == "seccomp" and value:
            choice = value
        elif key == "no-new-privileges" and value in ("", "true"):
            pass  # the launcher always sets no_new_privs
        else:
            raise LauncherError(
                f"--security-opt {option!r} is not supported",
                hint="use seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges (which is always on)",
            )
    if choice == "unconfined":
        return Policy("unconfined", None)
    if choice == "default":
        from pbuild.tools.launcher.seccomp_default import DEFAULT_PROFILE

        return Policy("default", DEFAULT_PROFILE)
    from pbuild.tools.launcher.seccomp_profile import parse_profile

    data = read_profile(choice)
    parse_profile(data, choice)  # report a bad profile now, even when its program is cached
    return Policy(choice, data)


def policy_from_record(record: Any) -> Policy:
    """The policy of a running container, from its state file (``pbuild exec``)."""
    if isinstance(record, dict):
        return Policy("(the container's profile)", record)
    if record == "unconfined":
        return Policy("unconfined", None)
    return choose_policy(())  # "default", or a state file written before filters existed


class _Version(ctypes.Structure):
    """``struct scmp_version``"""

    _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint))


class _Library:
    """The few libseccomp functions needed, with their C signatures."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(_LIBRARY, use_errno=True)
        except OSError as e:
            raise LauncherError(
                f"the container's seccomp filter needs libseccomp ({_LIBRARY}), which cannot be loaded: {e}",
                hint=_PACKAGE_HINT,
            ) from None
        c = ctypes
        lib.seccomp_init.argtypes, lib.seccomp_init.restype = [c.c_uint32], c.c_void_p
        lib.seccomp_release.argtypes, lib.seccomp_release.restype = [c.c_void_p], None
        lib.seccomp_arch_native.argtypes, lib.seccomp_arch_native.restype = [], c.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [c.c_char_p]
        lib.seccomp_arch_resolve_name.restype = c.c_uint32
        lib.seccomp_arch_add.argtypes = [c.c_void_p, c.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [c.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [c.c_void_p, c.c_uint32, c.c_int, c.c_uint, c.c_void_p]
        lib.seccomp_attr_set.argtypes = [c.c_void_p, c.c_int, c.c_uint32]
        lib.seccomp_export_bpf.argtypes = [c.c_void_p, c.c_int]
        lib.seccomp_version.argtypes, lib.seccomp_version.restype = [], c.POINTER(_Version)
        self.lib = lib


_library: _Library | None = None


def _lib() -> Any:
    global _library
    if _library is None:
        _library = _Library()
    return _library.lib


def build_program(
    policy: Policy,
    capabilities: frozenset[str],
    cache_dir: str | None = None,
    uname: os.uname_result | None = None,
) -> bytes:
    """The filter for ``policy`` and a container with ``capabilities`` (``CAP_`` names), empty
    for an unconfined one.

    Compiling the default profile for three architectures takes 20-30 ms, more than the rest
    of the launch, so programs are kept in ``cache_dir``. An entry starts with everything its
    program depends on (profile, capabilities, host, libseccomp version) and is used only if
    that matches exactly; the file name is just a checksum of it (hashlib's OpenSSL would cost
    more to import than the whole lookup)."""
    if policy.profile is None:
        return b""
    uname = uname or os.uname()
    lib = _lib()  # even on a cache hit: the same failure whether or not a program was cached
    version = lib.seccomp_version().contents
    key = canonical_json(
        [_CACHE_FORMAT, policy.profile, sorted(capabilities), uname.machine, uname.release,
         [version.major, version.minor, version.micro]],
        ascii_only=True,
    ) + b"\n"  # fmt: skip
    path = None
    if cache_dir and _private_dir(cache_dir):
        path = os.path.join(cache_dir, f"{zlib.crc32(key):08x}.bpf")
        try:
            with open(path, "rb") as f:
                entry = f.read()
            program = entry[len(key) :]
            if entry.startswith(key) and program and len(program) % 8 == 0:
                return program
        except OSError:
            pass
    from pbuild.tools.launcher.seccomp_profile import compile_profile, parse_profile

    program = compile_profile(lib, parse_profile(policy.profile, policy.source), capabilities, uname)
    if path:
        with contextlib.suppress(OSError):  # a cache: not written is only slower next time
            atomicio.write_bytes(path, key + program)
    return program


def _private_dir(path: str) -> bool:
    """Create ``path`` (0700) if needed; use it only if it is ours and no one else may write
    there: a program placed there by someone else would be the container's filter."""
    with contextlib.suppress(FileExistsError, OSError):
        os.makedirs(path, mode=0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``"""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install(program: bytes) -> None:
    """In the container, just before execve: apply ``program`` to this thread and all it
    starts. Needs no_new_privs (or CAP_SYS_ADMIN). An empty program means unconfined."""
    if not program:
        return
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    linux.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
