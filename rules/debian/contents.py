"""The ``contents`` of a Debian layer's sidecar: one record per package, what the SBOM is made from.

Name, version, architecture, file name and sha256 come from the lock (the sha256 is of the .deb
that was verified against it); source and homepage from the package's control fields; the licence
from its machine-readable copyright file (:mod:`pbuild.rules.debian.copyright`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from pbuild.rules.debian.copyright import license_expression
from pbuild.rules.debian.deb import DebContents, merged_usr_path
from pbuild.rules.oci.layerwriter import LayerEntry


def package_contents(debs: Sequence[DebContents], locked: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per package of ``locked`` (the lock's fields of ``debs``, in the same order), sorted."""
    if len(debs) != len(locked):
        raise ValueError(f"{len(debs)} packages unpacked, {len(locked)} locked")
    entries = {e.path: e for deb in debs for e in deb.entries}
    out = []
    for deb, pinned in zip(debs, locked, strict=True):
        control = deb.control
        record: dict[str, Any] = {
            "type": "deb",
            "name": pinned["name"],
            "version": pinned["version"],
            "architecture": pinned["architecture"],
            "filename": pinned["filename"],
            "sha256": pinned["sha256"],
            "license": None,
            # Debian policy: a package without a Source field is built from the source of its name.
            "source": control.get("Source", control["Package"]).split(" ", 1)[0],
        }
        text = copyright_text(entries, control["Package"])
        if text is not None:
            record["license"] = license_expression(text)
        if control.get("Homepage"):
            record["homepage"] = control["Homepage"].strip()
        out.append(record)
    return sorted(out, key=lambda r: (r["name"], r["architecture"], r["version"]))


def copyright_text(entries: Mapping[str, LayerEntry], package: str) -> str | None:
    """``/usr/share/doc/<package>/copyright`` of the closure's files, following symlinks (a package's
    doc folder is often a link to the one of the package it is built with), or None."""
    path: str | None = f"usr/share/doc/{package}/copyright"
    for _ in range(40):  # the kernel's limit on nested links
        path = _resolve_dirs(entries, path) if path else None
        entry = entries.get(path) if path else None
        if entry is None:
            return None
        if entry.kind == "file":
            data = entry.data if entry.data is not None else _read(entry.source)
            return data.decode("utf-8", "replace")
        if entry.kind != "symlink":
            return None
        path = _join(posixpath.dirname(entry.path), entry.target)
    return None


def _resolve_dirs(entries: Mapping[str, LayerEntry], path: str) -> str | None:
    """``path`` with every symlinked parent folder replaced by its target."""
    parts = path.split("/")
    current = ""
    for part in parts[:-1]:
        current = f"{current}/{part}" if current else part
        entry = entries.get(current)
        for _ in range(40):
            if entry is None or entry.kind != "symlink":
                break
            current = _join(posixpath.dirname(current), entry.target)
            entry = entries.get(current)
    return f"{current}/{parts[-1]}" if current else parts[-1]


def _join(base: str, target: str) -> str:
    joined = posixpath.normpath(posixpath.join("" if target.startswith("/") else base, target.lstrip("/")))
    return merged_usr_path(joined)


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as handle:
        return handle.read()
