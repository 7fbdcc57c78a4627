"""The Debian lock: which exact .deb files each ``deb_packages`` target uses, and ``pbuild lock --debian``.

One lock per package folder, ``debian.lock.json``, beside the ``BUILD.toml`` that declares the
targets. It records, per target, the request it was made from (so analysis can tell that the
package list changed) and for each package of the closure: name, version, architecture, pool
file name, sha256, size, suite and dependencies. It never records a mirror or host.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbuild.engine.errors import Location, PbuildError
from pbuild.lib import atomicio
from pbuild.lib.determinism import pretty_json
from pbuild.lib.tomlpos import load_toml
from pbuild.rules.debian import sources

if TYPE_CHECKING:
    from pbuild.rules.debian import archive, resolve

LOCK_NAME = "debian.lock.json"
LOCK_VERSION = 1
RULE_NAME = "deb_packages"
DEFAULT_SUITES = ("bookworm",)
DEFAULT_ARCH = "amd64"
DEFAULT_COMPONENTS = ("main",)
#: Environment variable naming the keyring InRelease files are verified with.
KEYRING_ENV = "PBUILD_DEBIAN_KEYRING"
_SKIP_DIRS = {".git", ".venv", "pbuild-out", "node_modules", "__pycache__"}


class DebianLockError(PbuildError):
    """A missing, unreadable or out-of-date Debian lock."""


@dataclass(frozen=True)
class Request:
    """What a ``deb_packages`` target asks for; the lock stores it to detect staleness."""

    packages: tuple[str, ...]
    suites: tuple[str, ...] = DEFAULT_SUITES
    architecture: str = DEFAULT_ARCH
    components: tuple[str, ...] = DEFAULT_COMPONENTS

    def to_json(self) -> dict[str, Any]:
        return {
            "packages": sorted(set(self.packages)),
            "suites": list(self.suites),
            "architecture": self.architecture,
            "components": list(self.components),
        }


@dataclass(frozen=True, order=True)
class LockedPackage:
    """One pinned .deb."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    suite: str
    dependencies: tuple[str, ...]

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "filename": self.filename,
            "sha256": self.sha256,
            "size": self.size,
            "suite": self.suite,
            "dependencies": list(self.dependencies),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LockedPackage:
        return cls(str(data["name"]), str(data["version"]), str(data["architecture"]), str(data["filename"]),
                   str(data["sha256"]), int(data["size"]), str(data["suite"]), tuple(data.get("dependencies", ())))


@dataclass(frozen=True)
class LockedTarget:
    """A target's entry in the lock."""

    request: dict[str, Any]
    packages: tuple[LockedPackage, ...]
    os_release: dict[str, str]


def lock_path(workspace_root: str, package: str) -> str:
    return os.path.join(workspace_root, package, LOCK_NAME)


def read_locked_target(workspace_root: str, package: str, name: str, request: Request,
                       *, location: Location | None = None, label: object = None) -> LockedTarget:
    """The lock entry of target ``name``; a missing or stale lock is a :class:`DebianLockError` naming the fix."""
    path = lock_path(workspace_root, package)
    rel = os.path.join(package, LOCK_NAME) if package else LOCK_NAME
    fix = "run `./pbuild lock --debian` and commit " + rel
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DebianLockError(f"no Debian lock {rel}", location=location, label=label, hint=fix) from None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested absurdly deep
        raise DebianLockError(f"cannot read the Debian lock {rel}: {exc}", location=location, label=label, hint=fix) from None
    if not isinstance(data, dict):
        raise DebianLockError(f"{rel} is not a Debian lock (not a JSON object)", location=location, label=label, hint=fix)
    if data.get("version") != LOCK_VERSION:
        raise DebianLockError(f"{rel} has lock format version {data.get('version')!r}, expected {LOCK_VERSION}",
                        location=location, label=label, hint=fix)
    entry = data.get("targets", {}).get(name)
    if entry is None:
        raise DebianLockError(f"{rel} has no entry for target {name!r}", location=location, label=label, hint=fix)
    if entry.get("request") != request.to_json():
        raise DebianLockError(
            f"{rel} is out of date with the package list of {name!r}: locked for "
            f"{json.dumps(entry.get('request'), sort_keys=True)}, the target asks for "
            f"{json.dumps(request.to_json(), sort_keys=True)}",
            location=location, label=label, hint=fix,
        )
    return LockedTarget(
        request=entry["request"],
        packages=tuple(LockedPackage.from_json(p) for p in entry.get("packages", ())),
        os_release=dict(entry.get("os_release", {})),
    )


# ---------------------------------------------------------------------------------------------
# pbuild lock --debian


def _ignored(workspace_root: str) -> Any:
    """The workspace's ``.pbuildignore`` (gitignore syntax) as a matcher, or None."""
    path = os.path.join(workspace_root, ".pbuildignore")
    if not os.path.exists(path):
        return None
    import pathspec

    with open(path, encoding="utf-8") as handle:
        return pathspec.PathSpec.from_lines("gitignore", handle.read().splitlines())


def find_targets(workspace_root: str) -> dict[str, dict[str, Request]]:
    """Every ``deb_packages`` target of the workspace: ``{package: {name: Request}}``.

    Like package discovery, this skips ``.pbuildignore``d folders and nested workspaces.
    """
    found: dict[str, dict[str, Request]] = {}
    ignore = _ignored(workspace_root)
    for dirpath, dirnames, filenames in os.walk(workspace_root):
        keep = []
        for name in sorted(dirnames):
            rel = os.path.relpath(os.path.join(dirpath, name), workspace_root).replace(os.sep, "/")
            if name in _SKIP_DIRS or name.startswith("."):
                continue
            if ignore is not None and ignore.match_file(rel + "/"):
                continue
            if os.path.exists(os.path.join(dirpath, name, "WORKSPACE.toml")):
                continue  # another workspace
            keep.append(name)
        dirnames[:] = keep
        if "BUILD.toml" not in filenames:
            continue
        build = os.path.join(dirpath, "BUILD.toml")
        package = os.path.relpath(dirpath, workspace_root).replace(os.sep, "/")
        package = "" if package == "." else package
        try:
            with open(build, "rb") as handle:
                tables = load_toml(handle.read())
        except tomllib.TOMLDecodeError as exc:
            raise DebianLockError(f"{build}: {exc}", hint="fix the TOML syntax") from None
        for name, table in tables.items():
            if isinstance(table, dict) and table.get("rule") == RULE_NAME:
                found.setdefault(package, {})[name] = request_from_attrs(table)
    return found


def request_from_attrs(attrs: Mapping[str, Any]) -> Request:
    return Request(
        packages=tuple(attrs.get("packages", ())),
        suites=tuple(attrs.get("suites", DEFAULT_SUITES)),
        architecture=str(attrs.get("architecture", DEFAULT_ARCH)),
        components=tuple(attrs.get("components", DEFAULT_COMPONENTS)),
    )


class _IndexCache:
    """Packages indexes and Release data fetched once per ``lock_debian`` call."""

    releases: dict[str, archive.Release]

    def __init__(self, mirror: str | None, keyring: str | None = None) -> None:
        self.mirror = mirror
        self.keyring = keyring
        self.releases = {}
        self.paragraphs: dict[tuple[str, str, str], list[dict[str, str]]] = {}

    def release(self, suite: str) -> archive.Release:
        from pbuild.rules.debian import archive  # network code: imported by `pbuild lock` only

        if suite not in self.releases:
            source = sources.mirror_for_suite(suite, mirror=self.mirror)
            self.releases[suite] = archive.read_release(source, suite, keyring=self.keyring)
        return self.releases[suite]

    def index(self, request: Request) -> resolve.Index:
        from pbuild.rules.debian import archive, resolve

        pairs = []
        for suite in request.suites:
            release = self.release(suite)
            source = sources.mirror_for_suite(suite, mirror=self.mirror)
            for component in request.components:
                key = (suite, component, request.architecture)
                if key not in self.paragraphs:
                    self.paragraphs[key] = archive.read_packages(source, suite, component, request.architecture, release)
                pairs += [(suite, fields) for fields in self.paragraphs[key]]
        return resolve.Index.from_paragraphs(pairs, request.architecture)


def lock_target(request: Request, cache: _IndexCache, *, context: str) -> dict[str, Any]:
    """Resolve one target's request into its lock entry."""
    from pbuild.rules.debian import resolve

    index = cache.index(request)
    closure = resolve.resolve(index, request.packages, context=context)
    first = cache.release(request.suites[0]).fields
    return {
        "request": request.to_json(),
        "os_release": {
            "codename": first.get("Codename", request.suites[0]),
            "version": first.get("Version", ""),
        },
        "packages": [
            LockedPackage(r.package.name, r.package.version, r.package.architecture, r.package.filename,
                          r.package.sha256, r.package.size, r.package.suite, r.dependencies).to_json()
            for r in closure
        ],
    }


def lock_debian(workspace_root: str, *, mirror: str | None = None, keyring: str | None = None,
                out: Any = None) -> None:
    """``pbuild lock --debian``: resolve every ``deb_packages`` target and write each package's lock.

    ``mirror`` overrides the host's apt sources (as does ``$PBUILD_DEBIAN_MIRROR``); the lock never
    records it. ``keyring`` (or ``$PBUILD_DEBIAN_KEYRING``) names the keyring InRelease is checked
    with; by default the apt source's Signed-By, else the Debian archive keyring.
    """
    stream = out or sys.stderr
    targets = find_targets(workspace_root)
    if not targets:
        raise DebianLockError("no deb_packages targets in this workspace", hint="declare one in a BUILD.toml first")
    cache = _IndexCache(mirror, keyring or os.environ.get(KEYRING_ENV) or None)
    for package, requests in sorted(targets.items()):
        entries = {}
        for name, request in sorted(requests.items()):
            if not request.packages:
                raise DebianLockError(f"//{package}:{name} lists no packages", hint="set packages = [...]")
            entries[name] = lock_target(request, cache, context=f"//{package}:{name}")
            print(f"locked //{package}:{name}: {len(entries[name]['packages'])} packages", file=stream)
        document = {
            "comment": "Generated by `pbuild lock --debian`; do not edit. No mirror is recorded: "
                       "packages are fetched from the host's apt sources or --mirror.",
            "version": LOCK_VERSION,
            "targets": entries,
        }
        path = lock_path(workspace_root, package)
        atomicio.write_text(path, pretty_json(document))


def locked_basenames(packages: Sequence[LockedPackage]) -> list[str]:
    return [p.basename for p in packages]
