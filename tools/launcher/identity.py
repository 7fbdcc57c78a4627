"""Who the container runs as: user namespace id maps, ``-u USER[:GROUP]``, and capabilities."""

from __future__ import annotations

import os
import pwd
from typing import NamedTuple

from pbuild.tools.launcher.errors import LauncherError

# Docker's default capability set (numbers from linux/capability.h).
DEFAULT_CAPABILITIES = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
DEFAULT_CAP_MASK = sum(1 << n for n in DEFAULT_CAPABILITIES.values())
# Every capability the kernel defines (linux/capability.h), for --cap-add and --cap-drop.
ALL_CAPABILITIES = {
    **DEFAULT_CAPABILITIES,
    "DAC_READ_SEARCH": 2,
    "LINUX_IMMUTABLE": 9,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "LEASE": 28,
    "AUDIT_CONTROL": 30,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}


def capability_mask(add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> int:
    """Docker's ``--cap-add``/``--cap-drop``: the default set plus ``add`` minus ``drop``; ``ALL``
    in ``add`` starts from every capability, ``ALL`` in ``drop`` from none. Names are
    case-insensitive, with or without ``CAP_``."""

    def bits(names: tuple[str, ...], flag: str) -> tuple[int, bool]:
        mask, everything, unknown = 0, False, []
        for name in names:
            key = name.upper().removeprefix("CAP_")
            if key == "ALL":
                everything = True
            elif key in ALL_CAPABILITIES:
                mask |= 1 << ALL_CAPABILITIES[key]
            else:
                unknown.append(name)
        if unknown:
            raise LauncherError(
                f"{flag}: unknown capabilit{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}",
                hint=f"use names such as SYS_ADMIN or NET_ADMIN (or ALL); known: {', '.join(sorted(ALL_CAPABILITIES))}",
            )
        return mask, everything

    added, add_all = bits(add, "--cap-add")
    dropped, drop_all = bits(drop, "--cap-drop")
    every = sum(1 << n for n in ALL_CAPABILITIES.values())
    if add_all:
        return every & ~dropped
    if drop_all:
        return added
    return (DEFAULT_CAP_MASK | added) & ~dropped


def capability_names(mask: int) -> frozenset[str]:
    """``CAP_``-prefixed names of the capabilities in ``mask`` (as seccomp profiles spell them)."""
    return frozenset(f"CAP_{name}" for name, n in ALL_CAPABILITIES.items() if mask & (1 << n))


class IdMap(NamedTuple):
    """The uid/gid maps of the container's user namespace.

    ``helper`` means newuidmap/newgidmap write them (a subordinate range from /etc/subuid);
    otherwise the launcher writes them itself: the full identity range of 65536 ids as root,
    else the single-id map "container root = the calling user".
    """

    uid_map: str
    gid_map: str
    helper: bool = False

    @property
    def single(self) -> bool:
        return self.uid_map.count("\n") == 1 and self.uid_map.split()[2] == "1"


def _subordinate_range(path: str, user: str, uid: int) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)):
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        return None
    return None


def choose_id_map() -> IdMap:
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        return IdMap("0 0 65536\n", "0 0 65536\n")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    sub_uid = _subordinate_range("/etc/subuid", user, uid)
    sub_gid = _subordinate_range("/etc/subgid", user, uid)
    import shutil

    if sub_uid and sub_gid and shutil.which("newuidmap") and shutil.which("newgidmap"):
        return IdMap(
            f"0 {uid} 1\n1 {sub_uid[0]} {min(sub_uid[1], 65535)}\n",
            f"0 {gid} 1\n1 {sub_gid[0]} {min(sub_gid[1], 65535)}\n",
            helper=True,
        )
    return IdMap(f"0 {uid} 1\n", f"0 {gid} 1\n")


class User(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(spec: str) -> User:
    """Resolve ``USER[:GROUP]`` (names or numbers) against the container's /etc/passwd and
    /etc/group; call after pivot_root."""
    user_part, _, group_part = spec.partition(":")
    passwd = _read_db("/etc/passwd")
    entry = None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((e for e in passwd if len(e) >= 7 and e[2] == user_part), None)
    else:
        entry = next((e for e in passwd if len(e) >= 7 and e[0] == user_part), None)
        if entry is None:
            raise LauncherError(
                f"unable to find user {user_part}: no matching entries in the image's /etc/passwd"
            )
        uid = int(entry[2])
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else "/"
    groups_db = _read_db("/etc/group")
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = next((g for g in groups_db if len(g) >= 3 and g[0] == group_part), None)
            if match is None:
                raise LauncherError(
                    f"unable to find group {group_part}: no matching entries in the image's /etc/group"
                )
            gid = int(match[2])
    name = entry[0] if entry else None
    extra = tuple(
        sorted(
            {
                int(g[2])
                for g in groups_db
                if len(g) >= 4 and name and name in g[3].split(",") and g[2].isdigit()
            }
            - {gid}
        )
    )
    return User(uid, gid, extra, home)
