"""Providers of the Python rule family, shared with the image rules (``rules/oci``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pbuild.engine.api import File, Provider


@dataclass(frozen=True, order=True)
class WheelBuild:
    """The wheel file a locked project uses on one platform (``linux/arm64``)."""

    platform: str
    filename: str
    sha256: str
    file: File  # the verified ``.whl`` in ``pbuild-out`` (fetched only when an action needs it)


@dataclass(frozen=True, order=True)
class Wheel:
    """One locked wheel: ``file`` is the verified ``.whl`` in ``pbuild-out``, for the primary platform
    (:attr:`pbuild.lib.platforms.WorkspacePlatforms.primary`)."""

    name: str  # normalized project name (PEP 503)
    version: str
    filename: str
    sha256: str
    file: File
    # The wheel installed into an importable tree (purelib/platlib at its top, hash-based .pyc),
    # as a directory output; None for wheels not installed by pbuild.
    site: File | None = None
    # The project's wheel on every platform the lock covers (a pure wheel: the same file on each);
    # empty for a wheel that only exists for the primary platform (tool locks).
    builds: tuple[WheelBuild, ...] = ()

    def for_platform(self, platform: str) -> WheelBuild | None:
        """The build for ``platform`` (OCI spelling), or None when the lock has none for it."""
        for build in self.builds:
            if build.platform == platform:
                return build
        return None


@dataclass(frozen=True, order=True)
class PySource:
    """A first-party file and where it lands below an import root (``app/program.py``)."""

    file: File
    import_path: str


@dataclass(frozen=True)
class PyInfo(Provider):
    """The transitive Python closure of a target: first-party sources/data and locked wheels."""

    sources: tuple[PySource, ...] = ()
    wheels: tuple[Wheel, ...] = ()


@dataclass(frozen=True)
class PyBinaryInfo(Provider):
    """How to start a py_binary: run ``main_module`` (``python -m``) or call ``entry_point``."""

    pex: File
    main_module: str | None = None
    entry_point: str | None = None  # "module:function"
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    # The staged first-party sources (import paths below it, compiled) and the script that starts
    # the binary from them and the wheels' installed trees (``python -s -S <launcher>``).
    runfiles: File | None = None
    launcher: File | None = None
