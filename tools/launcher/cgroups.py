"""``--memory``, ``--pids-limit`` and ``--cpus`` through cgroups, where this machine allows it.

cgroup v2 when ``/sys/fs/cgroup`` is unified and our own cgroup is writable (root, or delegated
by systemd); cgroup v1 when we are root. One cgroup per container, next to the caller's own:
``.../pbuild-<short id>``. The launcher moves the monitor into it before the container's init
is forked, so the init and everything it starts inherit it; the monitor moves itself out and
removes it when the container ends (``rm`` removes leftovers of a killed launcher).
Anywhere else the flags are refused with a message that says why, never silently ignored.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

from pbuild.tools.launcher.errors import LauncherError

ROOT = "/sys/fs/cgroup"
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_PERIOD = 100_000


class Limits(NamedTuple):
    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None

    @property
    def wanted(self) -> bool:
        return any(v is not None for v in self)


def parse_memory(text: str) -> int:
    """``512m``, ``1g``, ``1048576`` -> bytes."""
    value = text.strip().lower().removesuffix("b") or "0"
    unit = _UNITS.get(value[-1], 1) if value[-1].isalpha() else 1
    number = value[:-1] if value[-1].isalpha() else value
    try:
        result = int(float(number) * unit)
    except ValueError:
        raise LauncherError(
            f"invalid --memory {text!r}", hint="use a number with b, k, m or g, e.g. 512m"
        ) from None
    if result < 4 << 20:
        raise LauncherError(f"--memory {text} is below the minimum of 4m")
    return result


def _own_paths() -> dict[str, str]:
    """controller -> our cgroup path ("" key for the v2 unified hierarchy)."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def create(limits: Limits, short_id: str) -> tuple[str, ...]:
    """Make the container's cgroup(s) with the limits written; return their directories."""
    if not limits.wanted:
        return ()
    own = _own_paths()
    unified = os.path.exists(os.path.join(ROOT, "cgroup.controllers"))
    made: list[str] = []
    try:
        if unified:
            parent = os.path.join(ROOT, own.get("", "/").lstrip("/"))
            if not os.access(parent, os.W_OK):
                raise LauncherError(
                    "--memory/--pids-limit/--cpus need a writable cgroup, and cgroup v2 is not delegated to you here",
                    hint="run as root, or under `systemd-run --user --scope -p Delegate=yes`",
                )
            with contextlib.suppress(OSError):
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids +cpu")
            path = os.path.join(parent, f"pbuild-{short_id}")
            os.mkdir(path)
            made.append(path)
            if limits.memory is not None:
                _write(os.path.join(path, "memory.max"), str(limits.memory))
            if limits.pids is not None:
                _write(os.path.join(path, "pids.max"), str(limits.pids))
            if limits.cpus is not None:
                _write(os.path.join(path, "cpu.max"), f"{int(limits.cpus * _PERIOD)} {_PERIOD}")
            return tuple(made)
        if os.geteuid() != 0:
            raise LauncherError(
                "--memory/--pids-limit/--cpus need cgroups: this machine has cgroup v1, which only root may use",
                hint="run as root, or drop the limit",
            )
        settings = {
            "memory": [("memory.limit_in_bytes", limits.memory)],
            "pids": [("pids.max", limits.pids)],
            "cpu": [("cpu.cfs_period_us", _PERIOD if limits.cpus else None),
                    ("cpu.cfs_quota_us", int(limits.cpus * _PERIOD) if limits.cpus else None)],
        }  # fmt: skip
        for controller, files in settings.items():
            if all(value is None for _, value in files):
                continue
            base = os.path.join(ROOT, controller)
            if not os.path.isdir(base):
                raise LauncherError(f"the cgroup v1 controller {controller} is not mounted at {base}")
            path = os.path.join(base, own.get(controller, "/").lstrip("/"), f"pbuild-{short_id}")
            os.mkdir(path)
            made.append(path)
            for name, value in files:
                if value is not None:
                    _write(os.path.join(path, name), str(value))
        return tuple(made)
    except OSError as e:
        remove(tuple(made))
        raise LauncherError(f"cannot set up the container's cgroup: {e}") from None
    except LauncherError:
        remove(tuple(made))
        raise


def attach(paths: tuple[str, ...], pid: int) -> None:
    for path in paths:
        _write(os.path.join(path, "cgroup.procs"), str(pid))


def remove(paths: tuple[str, ...] | list[str]) -> None:
    """Move the caller out (into the parent) and remove the now empty cgroups."""
    for path in paths:
        with contextlib.suppress(OSError):
            with open(os.path.join(path, "cgroup.procs")) as f:
                members = f.read().split()
            if str(os.getpid()) in members:
                _write(os.path.join(os.path.dirname(path), "cgroup.procs"), str(os.getpid()))
        with contextlib.suppress(OSError):
            os.rmdir(path)
