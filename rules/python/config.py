"""The Python target: which interpreter and platform locks resolve for and wheels are fetched for.

It comes from the ``[python]`` table of ``WORKSPACE.toml``; every key has a default so a workspace
without the table targets CPython 3.11 on manylinux_2_28 x86_64.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pbuild.engine.errors import Location, WorkspaceError
from pbuild.lib.platforms import ARCHITECTURES, Platform, PlatformError, read_platforms

_KEYS = ("version", "implementation", "abi", "platform", "interpreter")
# Sub-tables of [python] that are not part of the target: [python.tools.<tool>] (see tools.py).
_TABLES = ("tools",)
_VERSION_RE = re.compile(r"^3\.\d{1,2}$")
_MANYLINUX_RE = re.compile(r"^manylinux_2_(\d+)_(\w+)$")
# A manylinux tag's family (``manylinux_2_28``, ``manylinux2014``) and machine (``x86_64``).
_FAMILY_RE = re.compile(r"^(manylinux_2_\d+|manylinux2014)_(\w+)$")
_FOR_PLATFORMS = " for "
_LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
_OTHER_SYSTEMS = {"macosx": ("Darwin", "darwin"), "win": ("Windows", "win32")}
_IMPLEMENTATIONS = {"cp": ("cpython", "CPython"), "pp": ("pypy", "PyPy")}


@dataclass(frozen=True)
class PythonTarget:
    """The target interpreter and platform (see ``docs`` of the ``[python]`` table)."""

    version: str = "3.11"
    implementation: str = "cp"
    abi: str = "cp311"
    platform: str = "manylinux_2_28_x86_64"
    interpreter: str = "python3.11"

    @classmethod
    def from_config(cls, table: Mapping[str, Any], *, where: str = "WORKSPACE.toml") -> PythonTarget:
        """Validate a ``[python]`` table, reporting every problem at once."""
        problems = [f"unknown key {key!r} (known: {', '.join(_KEYS + _TABLES)})"
                    for key in table if key not in _KEYS and key not in _TABLES]
        values: dict[str, str] = {}
        for key in _KEYS:
            if key in table:
                value = table[key]
                if not isinstance(value, str) or not value:
                    problems.append(f"{key} must be a non-empty string, not {value!r}")
                else:
                    values[key] = value
        target = cls(**values)
        if not _VERSION_RE.match(target.version):
            problems.append(f"version must look like \"3.11\", not {target.version!r}")
        if target.implementation not in _IMPLEMENTATIONS:
            problems.append(f"implementation must be one of {sorted(_IMPLEMENTATIONS)}, not {target.implementation!r}")
        if not re.match(r"^[a-z]+_?\w*$", target.platform):
            problems.append(f"platform {target.platform!r} is not a wheel platform tag")
        if problems:
            raise WorkspaceError(
                "bad [python] table: " + "; ".join(problems),
                location=Location(where),
                hint="see docs for the [python] keys: version, implementation, abi, platform, interpreter, "
                     "and the [python.tools.<tool>] tables",
            )
        return target

    @property
    def platform_tags(self) -> tuple[str, ...]:
        """Every platform tag a wheel may carry to run on ``platform``, best first.

        pip's ``--platform`` takes tags literally (it does not widen ``manylinux_2_28`` to the older
        glibc tags that also run there), so the resolver gets the whole list.
        """
        match = _MANYLINUX_RE.match(self.platform)
        if not match:
            return (self.platform,)
        newest, arch = int(match.group(1)), match.group(2)
        tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 4, -1)]
        for legacy, minor in _LEGACY_MANYLINUX.items():
            if minor <= newest and (arch in ("x86_64", "i686") or legacy == "manylinux2014"):
                tags.append(f"{legacy}_{arch}")
        return tuple(tags)

    @property
    def machine(self) -> str:
        """``platform_machine`` of the target (for environment markers)."""
        match = _MANYLINUX_RE.match(self.platform)
        if match:
            return match.group(2)
        for prefix in ("manylinux2014_", "manylinux2010_", "manylinux1_", "linux_", "musllinux_"):
            if self.platform.startswith(prefix):
                return self.platform.split("_", 3 if prefix == "musllinux_" else 1)[-1]
        return self.platform.rsplit("_", 1)[-1]

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the target, to decide which dependencies apply there."""
        name, python_impl = _IMPLEMENTATIONS[self.implementation]
        linux = "linux" in self.platform
        system, sys_platform = ("Linux", "linux") if linux else _OTHER_SYSTEMS.get(
            self.platform.split("_", 1)[0], ("", self.platform.split("_", 1)[0]))
        return {
            "implementation_name": name,
            "implementation_version": self.version,
            "os_name": "posix",
            "platform_machine": self.machine,
            "platform_python_implementation": python_impl,
            "platform_release": "",
            "platform_system": system,
            "platform_version": "",
            "python_full_version": self.version + ".0",
            "python_version": self.version,
            "sys_platform": sys_platform,
        }

    def pip_args(self) -> list[str]:
        """pip options that select wheels for the target instead of the host."""
        args = ["--only-binary=:all:"]
        for tag in self.platform_tags:
            args += ["--platform", tag]
        args += ["--python-version", self.version, "--implementation", self.implementation, "--abi", self.abi]
        return args

    @property
    def interpreter_tag(self) -> str:
        """``cp311``: the implementation and version, which is all a pure-Python lock depends on."""
        return f"{self.implementation}{self.version.replace('.', '')}"

    def describe(self) -> str:
        """One line for lock headers and error messages."""
        return f"{self.interpreter_tag} abi {self.abi} on {self.platform}"

    def for_platform(self, platform: Platform, *, where: str = "WORKSPACE.toml") -> PythonTarget:
        """The same interpreter with the wheel platform tag of ``platform``'s machine
        (``manylinux_2_28_x86_64`` -> ``manylinux_2_28_aarch64`` for ``linux/arm64``).

        Only manylinux tags name a family that exists for every machine pbuild builds; any other tag
        is kept when its machine already is ``platform``'s and refused otherwise.
        """
        if self.machine == platform.machine:
            return self
        match = _FAMILY_RE.match(self.platform)
        if not match:
            raise WorkspaceError(
                f"[python] platform {self.platform!r} is not a manylinux tag, so pbuild cannot tell its "
                f"counterpart for {platform} ([platforms] locks)",
                location=Location(where),
                hint='use a manylinux tag such as "manylinux_2_28_x86_64", or lock only '
                     f"for {self.machine} in [platforms] locks",
            )
        return replace(self, platform=f"{match.group(1)}_{platform.machine}")

    def describe_platforms(self, platforms: Sequence[Platform]) -> str:
        """The lock header's target for ``platforms``: one platform reads as :meth:`describe` of
        :meth:`for_platform`; several as ``cp311 abi cp311 on manylinux_2_28 for linux/amd64 linux/arm64``."""
        if len(platforms) == 1:
            return self.for_platform(platforms[0]).describe()
        match = _FAMILY_RE.match(self.for_platform(platforms[0]).platform)
        family = match.group(1) if match else self.platform
        return (f"{self.interpreter_tag} abi {self.abi} on {family}{_FOR_PLATFORMS}"
                + " ".join(str(p) for p in platforms))


def described_platforms(description: str) -> tuple[str, ...]:
    """The platforms (OCI spelling) a lock header's target covers: those after `` for ``, or the one
    whose machine ends a single-platform target (``...manylinux_2_28_x86_64`` -> ``linux/amd64``);
    () when the tag names no machine pbuild knows."""
    if _FOR_PLATFORMS in description:
        return tuple(description.split(_FOR_PLATFORMS, 1)[1].split())
    tag = description.rsplit(" ", 1)[-1]
    for arch, (_, machine) in ARCHITECTURES.items():
        if tag.endswith("_" + machine) and "linux" in tag:
            return (f"linux/{arch}",)
    return ()


def read_python_target(workspace_config: Mapping[str, Any], *, where: str = "WORKSPACE.toml") -> PythonTarget:
    """The :class:`PythonTarget` of a parsed ``WORKSPACE.toml``."""
    table = workspace_config.get("python", {})
    if not isinstance(table, Mapping):
        raise WorkspaceError("[python] must be a table", location=Location(where))
    return PythonTarget.from_config(table, where=where)


def lock_platforms(workspace_config: Mapping[str, Any]) -> tuple[Platform, ...] | None:
    """``[platforms] locks`` of a parsed ``WORKSPACE.toml``, or None when it has no (or an empty)
    ``[platforms]`` table: such a workspace locks for ``[python] platform`` alone, as before the table
    existed. Raises :class:`~pbuild.lib.platforms.PlatformError` for a malformed table."""
    if not workspace_config.get("platforms"):
        return None
    return read_platforms(workspace_config).locks


def read_lock_platforms(workspace_config: Mapping[str, Any], *,
                        where: str = "WORKSPACE.toml") -> tuple[Platform, ...] | None:
    """:func:`lock_platforms`, a malformed table reported as a :class:`WorkspaceError` at ``where``."""
    try:
        return lock_platforms(workspace_config)
    except PlatformError as exc:
        raise WorkspaceError(exc.message, location=Location(where), hint=exc.hint) from None
