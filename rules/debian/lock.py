"""The Debian lock: which exact .deb files each ``deb_packages`` target uses, and ``pbuild lock --debian``.

One lock per package folder, ``debian.lock.json``, beside the ``BUILD.toml`` that declares the
targets. It records, per target, the request it was made from (so analysis can tell that the
package list changed) and for each package of the closure: name, version, architecture, pool
file name, sha256, size, suite and dependencies. It never records a mirror or host.

A workspace whose ``[platforms] locks`` names several platforms gets one closure per platform:
the entry's ``packages`` are the first platform's, ``platforms`` holds the others'
(``{"linux/arm64": {"packages": [...]}}``), and the request records ``platforms`` instead of
``architecture``. A single-platform lock is written exactly as before platforms existed.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pbuild.engine.errors import Location, PbuildError, WorkspaceError
from pbuild.lib import atomicio
from pbuild.lib.determinism import pretty_json
from pbuild.lib.platforms import Platform, PlatformError, WorkspacePlatforms, read_platforms
from pbuild.lib.tomlpos import load_toml
from pbuild.rules.debian import sources

if TYPE_CHECKING:
    from pbuild.rules.debian import archive, resolve

LOCK_NAME = "debian.lock.json"
LOCK_VERSION = 1
RULE_NAME = "deb_packages"
DEFAULT_SUITES = ("bookworm",)
DEFAULT_COMPONENTS = ("main",)
#: Environment variable naming the keyring InRelease files are verified with.
KEYRING_ENV = "PBUILD_DEBIAN_KEYRING"
_SKIP_DIRS = {".git", ".venv", "pbuild-out", "node_modules", "__pycache__"}


class DebianLockError(PbuildError):
    """A missing, unreadable or out-of-date Debian lock."""


#: The lock platforms of a workspace without a ``[platforms]`` table.
DEFAULT_PLATFORMS = WorkspacePlatforms().locks


@dataclass(frozen=True)
class Request:
    """What a ``deb_packages`` target asks for; the lock stores it to detect staleness.

    ``platforms`` are the workspace's lock platforms, first one first (its closure is the entry's
    ``packages``).
    """

    packages: tuple[str, ...]
    suites: tuple[str, ...] = DEFAULT_SUITES
    platforms: tuple[Platform, ...] = DEFAULT_PLATFORMS
    components: tuple[str, ...] = DEFAULT_COMPONENTS

    def to_json(self) -> dict[str, Any]:
        # One platform: the request as it was before platforms (so that lock stays byte-identical).
        where: dict[str, Any] = ({"architecture": self.platforms[0].debian_arch} if len(self.platforms) == 1
                                 else {"platforms": [str(p) for p in self.platforms]})
        return {
            "packages": sorted(set(self.packages)),
            "suites": list(self.suites),
            **where,
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
    """A target's entry in the lock: ``packages`` is the first lock platform's closure,
    ``platform_packages`` every lock platform's (OCI spelling -> closure), the first included."""

    request: dict[str, Any]
    packages: tuple[LockedPackage, ...]
    os_release: dict[str, str]
    platform_packages: tuple[tuple[str, tuple[LockedPackage, ...]], ...] = ()

    def packages_for(self, platform: Platform) -> tuple[LockedPackage, ...]:
        """The closure locked for ``platform`` (a :class:`KeyError` if the lock has none)."""
        for name, packages in self.platform_packages:
            if name == str(platform):
                return packages
        raise KeyError(str(platform))


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
    locked_request = entry.get("request")
    if locked_request != request.to_json():
        raise DebianLockError(_stale_message(rel, name, locked_request, request),
                              location=location, label=label, hint=fix)
    first = tuple(LockedPackage.from_json(p) for p in entry.get("packages", ()))
    per_platform = [(str(request.platforms[0]), first)]
    others = entry.get("platforms", {})
    for platform in request.platforms[1:]:
        found = others.get(str(platform)) if isinstance(others, dict) else None
        if not isinstance(found, dict) or not isinstance(found.get("packages"), list):
            raise DebianLockError(f"{rel} does not cover platform {platform} for target {name!r}",
                                  location=location, label=label, hint=fix)
        per_platform.append((str(platform), tuple(LockedPackage.from_json(p) for p in found["packages"])))
    return LockedTarget(
        request=entry["request"],
        packages=first,
        os_release=dict(entry.get("os_release", {})),
        platform_packages=tuple(per_platform),
    )


def _locked_platforms(locked_request: Mapping[str, Any]) -> list[str]:
    if "platforms" in locked_request:
        return [str(p) for p in locked_request["platforms"]]
    return [f"linux/{locked_request.get('architecture', '?')}"]


def _stale_message(rel: str, name: str, locked_request: Any, request: Request) -> str:
    """Why the lock entry does not fit: the platforms (WORKSPACE.toml) or the target's attributes."""
    wanted = request.to_json()
    if isinstance(locked_request, dict):
        locked_platforms = _locked_platforms(locked_request)
        wanted_platforms = [str(p) for p in request.platforms]
        rest = {k: v for k, v in locked_request.items() if k not in ("platforms", "architecture")}
        if locked_platforms != wanted_platforms and rest == {k: v for k, v in wanted.items()
                                                             if k not in ("platforms", "architecture")}:
            return (f"{rel} is out of date with [platforms] locks of WORKSPACE.toml: target {name!r} is locked "
                    f"for {', '.join(locked_platforms)}, the workspace asks for {', '.join(wanted_platforms)}")
    return (f"{rel} is out of date with the package list of {name!r}: locked for "
            f"{json.dumps(locked_request, sort_keys=True)}, the target asks for {json.dumps(wanted, sort_keys=True)}")


def workspace_platforms(workspace_root: str) -> WorkspacePlatforms:
    """The ``[platforms]`` of ``WORKSPACE.toml``; a bad table is a :class:`WorkspaceError` there."""
    path = os.path.join(workspace_root, "WORKSPACE.toml")
    try:
        with open(path, "rb") as handle:
            config = load_toml(handle.read())
    except FileNotFoundError:
        return WorkspacePlatforms()
    except tomllib.TOMLDecodeError as exc:
        raise WorkspaceError(f"WORKSPACE.toml is not valid TOML: {exc}", location=Location(path)) from None
    try:
        return read_platforms(config)
    except PlatformError as exc:
        raise WorkspaceError(exc.message, location=Location(path), hint=exc.hint) from None


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


def find_targets(workspace_root: str, platforms: tuple[Platform, ...] = DEFAULT_PLATFORMS) -> dict[str, dict[str, Request]]:
    """Every ``deb_packages`` target of the workspace: ``{package: {name: Request}}``, each for ``platforms``.

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
                if "architecture" in table:
                    raise DebianLockError(f"//{package}:{name} sets 'architecture', which deb_packages no longer has",
                                          location=Location(build), hint=ARCHITECTURE_HINT)
                found.setdefault(package, {})[name] = request_from_attrs(table, platforms)
    return found


#: What to do instead of the removed ``architecture`` attribute.
ARCHITECTURE_HINT = ('remove it: the platforms come from WORKSPACE.toml, e.g. [platforms] '
                     'locks = ["linux/amd64", "linux/arm64"], then run ./pbuild lock --debian')


def request_from_attrs(attrs: Mapping[str, Any], platforms: tuple[Platform, ...] = DEFAULT_PLATFORMS) -> Request:
    return Request(
        packages=tuple(attrs.get("packages", ())),
        suites=tuple(attrs.get("suites", DEFAULT_SUITES)),
        platforms=platforms,
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

    def index(self, request: Request, architecture: str) -> resolve.Index:
        """The packages of ``architecture`` (and ``all``, which every binary-ARCH index lists) of the request's suites."""
        from pbuild.rules.debian import archive, resolve

        pairs = []
        for suite in request.suites:
            release = self.release(suite)
            source = sources.mirror_for_suite(suite, mirror=self.mirror)
            for component in request.components:
                key = (suite, component, architecture)
                if key not in self.paragraphs:
                    self.paragraphs[key] = archive.read_packages(source, suite, component, architecture, release)
                pairs += [(suite, fields) for fields in self.paragraphs[key]]
        return resolve.Index.from_paragraphs(pairs, architecture)


def _closure(request: Request, platform: Platform, cache: _IndexCache, *, context: str) -> list[dict[str, Any]]:
    from pbuild.rules.debian import resolve

    index = cache.index(request, platform.debian_arch)
    # With several platforms, a failure names the one whose index lacks the package.
    where = f"{context} for {platform}" if len(request.platforms) > 1 else context
    closure = resolve.resolve(index, request.packages, context=where)
    return [
        LockedPackage(r.package.name, r.package.version, r.package.architecture, r.package.filename,
                      r.package.sha256, r.package.size, r.package.suite, r.dependencies).to_json()
        for r in closure
    ]


def lock_target(request: Request, cache: _IndexCache, *, context: str) -> dict[str, Any]:
    """Resolve one target's request, for each of its platforms, into its lock entry."""
    first = cache.release(request.suites[0]).fields
    entry: dict[str, Any] = {
        "request": request.to_json(),
        "os_release": {
            "codename": first.get("Codename", request.suites[0]),
            "version": first.get("Version", ""),
        },
        "packages": _closure(request, request.platforms[0], cache, context=context),
    }
    if len(request.platforms) > 1:
        entry["platforms"] = {str(p): {"packages": _closure(request, p, cache, context=context)}
                              for p in request.platforms[1:]}
    return entry


def lock_debian(workspace_root: str, *, mirror: str | None = None, keyring: str | None = None,
                out: Any = None) -> None:
    """``pbuild lock --debian``: resolve every ``deb_packages`` target, for every ``[platforms] locks``
    platform, and write each package's lock.

    ``mirror`` overrides the host's apt sources (as does ``$PBUILD_DEBIAN_MIRROR``); the lock never
    records it. ``keyring`` (or ``$PBUILD_DEBIAN_KEYRING``) names the keyring InRelease is checked
    with; by default the apt source's Signed-By, else the Debian archive keyring.
    """
    stream = out or sys.stderr
    platforms = workspace_platforms(workspace_root).locks
    targets = find_targets(workspace_root, platforms)
    if not targets:
        raise DebianLockError("no deb_packages targets in this workspace", hint="declare one in a BUILD.toml first")
    cache = _IndexCache(mirror, keyring or os.environ.get(KEYRING_ENV) or None)
    for package, requests in sorted(targets.items()):
        entries = {}
        for name, request in sorted(requests.items()):
            if not request.packages:
                raise DebianLockError(f"//{package}:{name} lists no packages", hint="set packages = [...]")
            entries[name] = lock_target(request, cache, context=f"//{package}:{name}")
            counts = [str(len(entries[name]["packages"]))] + [
                str(len(p["packages"])) for p in entries[name].get("platforms", {}).values()]
            where = f" ({' + '.join(counts)} for {', '.join(map(str, platforms))})" if len(platforms) > 1 else ""
            print(f"locked //{package}:{name}: {len(entries[name]['packages'])} packages{where}", file=stream)
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
