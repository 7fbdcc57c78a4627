"""Target platforms: ``linux/amd64`` and ``linux/arm64``, as OCI names them, and the ``[platforms]`` table.

A platform is what an image runs on. pbuild builds every platform's layers on the host without
running the platform's code (it unpacks ``.deb`` files and installs wheels in Python, and the
host-platform interpreter of the same closure compiles bytecode), so an arm64 image needs no
emulator to build; only *running* one does (``pbuild run --platform``, binfmt_misc and
qemu-user-static).

``WORKSPACE.toml``::

    [platforms]
    locks = ["linux/amd64", "linux/arm64"]   # what `pbuild lock --python --debian` resolves for
    images = ["linux/amd64"]                 # what an image builds for when it sets no `platforms`

Both default to ``["linux/amd64"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pbuild.lib.architectures import ARCHITECTURES as ARCHITECTURES  # re-exported: the table lives there
from pbuild.lib.architectures import host_architecture
from pbuild.lib.errors import UserError

_KEYS = ("locks", "images")


class PlatformError(UserError):
    """A platform pbuild does not know, or a ``[platforms]`` table that is not well formed."""


@dataclass(frozen=True, order=True)
class Platform:
    """One target platform (``linux/arm64``); ``str()`` gives the OCI spelling back."""

    os: str
    architecture: str

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/amd64`` or ``linux/arm64`` (``linux/arm64/v8`` is arm64); anything else is refused."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) == 3 and parts[1] == "arm64" and parts[2] == "v8":
            parts = parts[:2]
        if len(parts) != 2 or parts[0] != "linux" or parts[1] not in ARCHITECTURES:
            raise PlatformError(f"unknown platform {text!r}",
                                hint=f"pbuild builds {', '.join(f'linux/{a}' for a in ARCHITECTURES)}")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}"

    @property
    def debian_arch(self) -> str:
        """The Debian architecture of the platform's packages (``amd64``, ``arm64``)."""
        return ARCHITECTURES[self.architecture][0]

    @property
    def machine(self) -> str:
        """``uname -m`` and the wheel platform tags' machine (``x86_64``, ``aarch64``)."""
        return ARCHITECTURES[self.architecture][1]

    @property
    def slug(self) -> str:
        """A folder name for the platform's outputs (``linux-arm64``)."""
        return f"{self.os}-{self.architecture}"


def host_platform() -> Platform:
    """The platform of this machine; an unknown machine keeps its ``uname -m`` name."""
    return Platform("linux", host_architecture())


@dataclass(frozen=True)
class WorkspacePlatforms:
    """The ``[platforms]`` table: what the locks cover and what images build by default."""

    locks: tuple[Platform, ...] = (Platform("linux", "amd64"),)
    images: tuple[Platform, ...] = (Platform("linux", "amd64"),)

    @property
    def primary(self) -> Platform:
        """The platform of a target's default outputs (``pbuild run //app:program``, toolchains): the
        host's when the locks cover it, else the first locked one."""
        host = host_platform()
        return host if host in self.locks else self.locks[0]

    def covers(self, platform: Platform) -> bool:
        return platform in self.locks


def parse_platform_list(value: Any, *, what: str) -> tuple[Platform, ...]:
    """A non-empty list of platform strings, without repeats, in the order given."""
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise PlatformError(f"{what} must be a non-empty list of platforms such as \"linux/amd64\", not {value!r}")
    found: list[Platform] = []
    for item in value:
        platform = Platform.parse(item)
        if platform in found:
            raise PlatformError(f"{what} names {platform} twice")
        found.append(platform)
    return tuple(found)


def read_platforms(workspace_config: Mapping[str, Any]) -> WorkspacePlatforms:
    """The :class:`WorkspacePlatforms` of a parsed ``WORKSPACE.toml`` (a :class:`PlatformError` if malformed).

    Every image platform must be one the locks cover, since its packages and wheels come from them.
    """
    table = workspace_config.get("platforms", {})
    if not isinstance(table, Mapping):
        raise PlatformError("[platforms] must be a table")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise PlatformError(f"[platforms] has unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    locks = parse_platform_list(table["locks"], what="[platforms] locks") if "locks" in table else \
        WorkspacePlatforms.locks
    images = parse_platform_list(table["images"], what="[platforms] images") if "images" in table else \
        (locks[0],) if "locks" in table and Platform("linux", "amd64") not in locks else WorkspacePlatforms.images
    uncovered = [str(p) for p in images if p not in locks]
    if uncovered:
        raise PlatformError(f"[platforms] images names {', '.join(uncovered)}, which the locks do not cover "
                            f"(locks: {', '.join(map(str, locks))})",
                            hint="add it to [platforms] locks, then run ./pbuild lock --python --debian")
    return WorkspacePlatforms(locks, images)
