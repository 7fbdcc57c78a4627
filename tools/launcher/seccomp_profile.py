"""Seccomp profiles in Docker's JSON layout: checked, then compiled with libseccomp.

:func:`parse_profile` turns the JSON into records and reports every problem at once, each with
its place (``syscalls[3].action``). :func:`compile_profile` keeps the rules that apply to this
container (its capabilities, the host's architecture and kernel) and has libseccomp turn them
into a classic BPF program for the host's architecture and its 32-bit companions (x86 and x32
beside x86_64, arm beside aarch64). libseccomp resolves the names, so nothing here knows a
syscall number; BPF is not assembled by hand because libseccomp already does the
per-architecture tables, the 32/64-bit argument checks and the x32 quirks well.

Only a container whose filter is not cached yet (see ``seccomp.build_program``) needs this
module, and a profile file's check.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, NamedTuple

from pbuild.tools.launcher.errors import LauncherError

# libseccomp's action values (seccomp.h); ERRNO and TRACE carry a 16-bit value.
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_WITH_VALUE = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_SCMP_FLTATR_CTL_OPTIMIZE = 8  # 2: a binary tree of syscalls instead of a linear list
_NR_SCMP_ERROR = -1
_BPF_MAXINSNS = 4096

# Host architectures as uname(2) and as Docker's profiles (Go's GOARCH) spell them.
_ARCH_ALIASES = {
    "x86_64": ("amd64", "x86_64"),
    "aarch64": ("arm64", "aarch64"),
    "i686": ("386", "x86"),
    "armv7l": ("arm",),
    "ppc64le": ("ppc64le",),
    "s390x": ("s390x",),
    "riscv64": ("riscv64",),
}


class Condition(NamedTuple):
    """A rule's ``includes`` or ``excludes``: capabilities, host architectures, kernel."""

    caps: frozenset[str] = frozenset()
    arches: frozenset[str] = frozenset()
    min_kernel: tuple[int, int] | None = None


class ArgCheck(NamedTuple):
    """One comparison of a syscall argument (``args`` in the profile)."""

    arg: int
    op: int
    value: int
    value_two: int


class Rule(NamedTuple):
    """One entry of ``syscalls``: an action for some syscalls, maybe only for some arguments."""

    names: tuple[str, ...]
    action: int
    args: tuple[ArgCheck, ...]
    includes: Condition
    excludes: Condition


class Profile(NamedTuple):
    """A checked seccomp profile."""

    default_action: int
    architectures: tuple[str, ...]
    """``SCMP_ARCH_*`` names listed by ``architectures`` (added to every filter)."""
    arch_map: tuple[tuple[str, tuple[str, ...]], ...]
    """(``SCMP_ARCH_*`` of a host, its sub-architectures), from ``archMap``."""
    rules: tuple[Rule, ...]


def _action(name: Any, value: Any, where: str, problems: list[str]) -> int:
    if name not in _ACTIONS:
        problems.append(
            f"{where}: unknown action {name!r} (expected one of {', '.join(sorted(_ACTIONS))}"
            + (
                "; SCMP_ACT_NOTIFY needs a listener, which pbuild has not"
                if name == "SCMP_ACT_NOTIFY"
                else ""
            )
            + ")"
        )
        return 0
    if name in _WITH_VALUE:
        if value is None:
            value = errno.EPERM
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            problems.append(f"{where}: errnoRet must be a number from 0 to 65535, not {value!r}")
            return 0
        return _ACTIONS[name] | value
    return _ACTIONS[name]


def _strings(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: expected a list of strings, not {value!r}")
        return ()
    return tuple(value)


def _condition(value: Any, where: str, problems: list[str]) -> Condition:
    if value is None:
        return Condition()
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object with caps, arches or minKernel")
        return Condition()
    for key in sorted(set(value) - {"caps", "arches", "minKernel"}):
        problems.append(f"{where}.{key}: unknown field (expected caps, arches or minKernel)")
    min_kernel = None
    if value.get("minKernel") is not None:
        text = value["minKernel"]
        parts = text.split(".") if isinstance(text, str) else []
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
            problems.append(f'{where}.minKernel: expected a version like "4.8", not {text!r}')
        else:
            min_kernel = (int(parts[0]), int(parts[1]))
    return Condition(
        frozenset(_strings(value.get("caps"), f"{where}.caps", problems)),
        frozenset(_strings(value.get("arches"), f"{where}.arches", problems)),
        min_kernel,
    )


def _arg(value: Any, where: str, problems: list[str]) -> ArgCheck | None:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object with index, value, valueTwo and op")
        return None
    index: Any = value.get("index")
    op: Any = value.get("op")
    numbers = [value.get("value", 0), value.get("valueTwo", 0)]
    ok = True
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
        problems.append(f"{where}.index: expected an argument number from 0 to 5, not {index!r}")
        ok = False
    if op not in _OPERATORS:
        problems.append(f"{where}.op: unknown operator {op!r} (expected one of {', '.join(_OPERATORS)})")
        ok = False
    for key, number in zip(("value", "valueTwo"), numbers, strict=True):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 1 << 64:
            problems.append(f"{where}.{key}: expected an unsigned 64-bit number, not {number!r}")
            ok = False
    return ArgCheck(index, _OPERATORS[op], numbers[0], numbers[1]) if ok else None


def parse_profile(data: Any, source: str) -> Profile:
    """Check a profile in Docker's JSON layout; every problem is reported in one error."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise LauncherError(f"seccomp profile {source}: expected a JSON object at the top")
    known = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags",
             "listenerPath", "listenerMetadata", "comment"}  # fmt: skip
    for key in sorted(set(data) - known):
        problems.append(f"{key}: unknown field")
    if data.get("flags"):
        problems.append("flags: filter flags are not supported (remove the field)")
    if data.get("listenerPath"):
        problems.append("listenerPath: a seccomp listener is not supported (remove the field)")
    if "defaultAction" not in data:
        problems.append('defaultAction: missing (e.g. "SCMP_ACT_ERRNO")')
    default = _action(data.get("defaultAction"), data.get("defaultErrnoRet"), "defaultAction", problems)
    architectures = _strings(data.get("architectures"), "architectures", problems)
    arch_map = []
    raw_map = data.get("archMap") or []
    if not isinstance(raw_map, list):
        problems.append("archMap: expected a list")
        raw_map = []
    for i, entry in enumerate(raw_map):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            problems.append(f"archMap[{i}]: expected an object with architecture and subArchitectures")
            continue
        subs = _strings(entry.get("subArchitectures"), f"archMap[{i}].subArchitectures", problems)
        arch_map.append((entry["architecture"], subs))
    rules = []
    raw_rules = data.get("syscalls") or []
    if not isinstance(raw_rules, list):
        problems.append("syscalls: expected a list")
        raw_rules = []
    for i, entry in enumerate(raw_rules):
        where = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        for key in sorted(set(entry) - {"names", "name", "action", "errnoRet", "args", "includes",
                                        "excludes", "comment"}):  # fmt: skip
            problems.append(f"{where}.{key}: unknown field")
        names = _strings(entry.get("names"), f"{where}.names", problems)
        if isinstance(entry.get("name"), str):  # the layout before Docker 17.04
            names += (entry["name"],)
        if not names:
            problems.append(f"{where}: names is missing or empty")
        if "action" not in entry:
            problems.append(f"{where}.action: missing")
        action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action", problems)
        raw_args = entry.get("args") or []
        if not isinstance(raw_args, list):
            problems.append(f"{where}.args: expected a list")
            raw_args = []
        args = [_arg(a, f"{where}.args[{j}]", problems) for j, a in enumerate(raw_args)]
        rules.append(
            Rule(
                names,
                action,
                tuple(a for a in args if a is not None),
                _condition(entry.get("includes"), f"{where}.includes", problems),
                _condition(entry.get("excludes"), f"{where}.excludes", problems),
            )
        )
    if problems:
        raise LauncherError(
            f"invalid seccomp profile {source}:\n    " + "\n    ".join(problems),
            hint="the layout is Docker's (see docs/launcher.md); "
            "`python -m pbuild.tools.launcher.seccomp_default` prints the default profile",
        )
    return Profile(default, architectures, tuple(arch_map), tuple(rules))


class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``"""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def _arch_token(lib: Any, name: str) -> int:
    token = int(lib.seccomp_arch_resolve_name(name.lower().removeprefix("scmp_arch_").encode()))
    if not token:
        raise LauncherError(f"seccomp profile: libseccomp does not know the architecture {name}")
    return token


def _kernel_version(release: str) -> tuple[int, int]:
    parts = (release.split("-")[0].split(".") + ["0", "0"])[:2]
    return int(parts[0]) if parts[0].isdigit() else 0, int(parts[1]) if parts[1].isdigit() else 0


def _applies(rule: Rule, caps: frozenset[str], host_arches: frozenset[str], kernel: tuple[int, int]) -> bool:
    """Docker's reading of includes and excludes: every included capability present, the host
    among the included architectures, the kernel at least minKernel; no excluded one."""
    inc, exc = rule.includes, rule.excludes
    if not inc.caps <= caps or (inc.arches and not inc.arches & host_arches):
        return False
    if inc.min_kernel and kernel < inc.min_kernel:
        return False
    if exc.caps & caps or exc.arches & host_arches:
        return False
    return not (exc.min_kernel and kernel >= exc.min_kernel)


def _conditions(args: tuple[ArgCheck, ...]) -> list[tuple[ArgCheck, ...]]:
    """Checks of different arguments must all hold; several checks of one argument are
    alternatives, each its own rule (as runc reads Docker's profiles)."""
    indexes = [a.arg for a in args]
    if len(set(indexes)) == len(indexes):
        return [args]
    return [(a,) for a in args]


def compile_profile(
    lib: Any, profile: Profile, capabilities: frozenset[str], uname: os.uname_result
) -> bytes:
    """The BPF program (``struct sock_filter`` array) of ``profile`` for a container with
    ``capabilities`` (``CAP_`` names) on this host."""
    host_arches = frozenset(_ARCH_ALIASES.get(uname.machine, (uname.machine,)))
    kernel = _kernel_version(uname.release)
    ctx = lib.seccomp_init(profile.default_action)
    if not ctx:
        raise LauncherError("libseccomp could not start a filter (seccomp_init failed)")
    try:
        native = int(lib.seccomp_arch_native())
        arches = [_arch_token(lib, a) for a in profile.architectures]
        for host, subs in profile.arch_map:
            if _arch_token(lib, host) == native:
                arches += [_arch_token(lib, s) for s in subs]
        for token in arches:
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and rc != -errno.EEXIST:  # the native one is in every filter already
                raise LauncherError(f"libseccomp cannot add architecture {token:#x}: {os.strerror(-rc)}")
        for rule in profile.rules:
            if rule.action == profile.default_action or not _applies(rule, capabilities, host_arches, kernel):
                continue
            for name in rule.names:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number == _NR_SCMP_ERROR:
                    continue  # unknown to this libseccomp (newer than it, or another kernel's)
                for checks in _conditions(rule.args):
                    array = (_ArgCmp * len(checks))(
                        *(_ArgCmp(a.arg, a.op, a.value, a.value_two) for a in checks)
                    )
                    rc = lib.seccomp_rule_add_array(ctx, rule.action, number, len(checks), array)
                    if rc < 0 and rc != -errno.EEXIST:
                        raise LauncherError(
                            f"seccomp profile: libseccomp refused the rule for {name}: {os.strerror(-rc)}",
                            hint="a syscall may have one action only; check its entries in the profile",
                        )
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)  # older libseccomp: ignored
        fd = os.memfd_create("pbuild-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise LauncherError(f"libseccomp could not write the filter: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if len(program) // 8 > _BPF_MAXINSNS:
        raise LauncherError(
            f"the seccomp filter has {len(program) // 8} instructions, more than the kernel's {_BPF_MAXINSNS}",
            hint="merge the profile's rules into fewer entries",
        )
    return program
