"""Providers of the Python rule family, shared with the image rules (``rules/oci``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pbuild.engine.api import File, Provider


@dataclass(frozen=True, order=True)
class Wheel:
    """One locked wheel: ``file`` is the verified ``.whl`` in ``pbuild-out``."""

    name: str  # normalized project name (PEP 503)
    version: str
    filename: str
    sha256: str
    file: File


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
