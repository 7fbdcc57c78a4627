"""``pbuild lock --python``: resolve ``requirements.in`` for the target and write the lock.

With several ``[platforms] locks`` the first platform is resolved freely and every other one with a
pip constraints file pinning each project to the first platform's version, so all platforms share
one set of versions (a project that only some platform needs, through a marker, is kept for it).

Why pip's resolver and not ``pex3 lock create``: pip honours the user's pip configuration as is
(``pip.conf``, ``PIP_*`` variables: index, extra indexes, find-links, certificates, constraints),
which is where DESIGN.md says hosts come from; pex runs its vendored pip in isolated mode and would
need every setting translated into its own flags. ``pip install --dry-run --report`` resolves for
a foreign platform (``--platform``/``--python-version``/``--abi`` with ``--only-binary=:all:``),
downloads nothing it does not need for metadata, and its JSON report gives each project's chosen
wheel, hash and ``Requires-Dist``, from which the dependency edges are recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from pbuild.engine.errors import Location, WorkspaceError
from pbuild.lib import atomicio
from pbuild.lib.platforms import Platform
from pbuild.lib.tomlpos import load_toml
from pbuild.rules.python.config import PythonTarget, read_lock_platforms, read_python_target
from pbuild.rules.python.lockfile import (
    Lock,
    LockedProject,
    LockedWheel,
    PythonLockError,
    inputs_digest,
    normalize_name,
    render_lock,
)
from pbuild.rules.python.wheels import pip_command

REQUIREMENTS_IN = "third_party/python/requirements.in"
REQUIREMENTS_LOCK = "third_party/python/requirements.lock"
_NO_MATCH_RE = re.compile(r"No matching distribution found for ([^\s]+)")
# pip's resolver names a constraint it could not meet as "The user requested (constraint) name==1.0".
_CONSTRAINT_RE = re.compile(r"\(constraint\) ([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_FROM_VERSIONS_RE = re.compile(r"\(from versions: ([^)]*)\)")


class NoWheelError(PythonLockError):
    """A requirement has no wheel for the target platform."""


def lock_python(workspace_root: str) -> None:
    """Resolve ``third_party/python/requirements.in`` and write ``requirements.lock`` beside it."""
    config = read_workspace(workspace_root)
    where = os.path.join(workspace_root, "WORKSPACE.toml")
    target = read_python_target(config, where=where)
    platforms = read_lock_platforms(config, where=where)
    in_path = os.path.join(workspace_root, REQUIREMENTS_IN)
    try:
        with open(in_path, encoding="utf-8") as handle:
            requirements_in = handle.read()
    except FileNotFoundError:
        raise PythonLockError(
            f"{REQUIREMENTS_IN} does not exist",
            location=Location(in_path),
            hint="list your top-level requirements there, one per line (e.g. numpy), then run ./pbuild lock --python",
        ) from None
    if platforms is None or len(platforms) == 1:
        single = target if platforms is None else target.for_platform(platforms[0], where=where)
        lock = resolve(requirements_in, single, requirements_path=in_path)
        atomicio.write_text(os.path.join(workspace_root, REQUIREMENTS_LOCK), render_lock(lock), parents=True)
        print(f"pbuild: locked {len(lock.projects)} projects for {single.describe()} into {REQUIREMENTS_LOCK}",
              file=sys.stderr)
        return
    lock = resolve_platforms(requirements_in, target, platforms, requirements_path=in_path, where=where)
    atomicio.write_text(os.path.join(workspace_root, REQUIREMENTS_LOCK), render_lock(lock), parents=True)
    for platform in platforms:
        count = sum(1 for project in lock.projects if project.wheel_for(str(platform)) is not None)
        print(f"pbuild: locked {count} projects for {platform} ({target.for_platform(platform).describe()}) "
              f"into {REQUIREMENTS_LOCK}", file=sys.stderr)


def resolve(requirements_in: str, target: PythonTarget, *, requirements_path: str) -> Lock:
    """Resolve with pip for ``target`` and return the :class:`Lock` (nothing is written)."""
    with tempfile.TemporaryDirectory(prefix="pbuild-lock-") as tmp:
        return lock_from_report(_target_report(target, requirements_path, tmp), target,
                                inputs_digest(requirements_in))


def resolve_platforms(requirements_in: str, target: PythonTarget, platforms: Sequence[Platform], *,
                      requirements_path: str, where: str = "WORKSPACE.toml") -> Lock:
    """Resolve for every platform with shared versions and return the version 2 :class:`Lock`."""
    digest = inputs_digest(requirements_in)
    targets = [target.for_platform(platform, where=where) for platform in platforms]
    with tempfile.TemporaryDirectory(prefix="pbuild-lock-") as tmp:
        first = lock_from_report(_target_report(targets[0], requirements_path, tmp), targets[0], digest)
        constraints = os.path.join(tmp, "constraints.txt")
        with open(constraints, "w", encoding="utf-8") as handle:
            handle.write(constraints_text(first))
        locks = [first]
        for platform, other in zip(platforms[1:], targets[1:], strict=True):
            report = _target_report(other, requirements_path, tmp, constraints=constraints, platform=platform,
                                    pins={project.name: project.version for project in first.projects})
            locks.append(lock_from_report(report, other, digest))
    return merge_platform_locks(locks, platforms, target.describe_platforms(platforms), digest)


def constraints_text(lock: Lock) -> str:
    """A pip constraints file pinning every project of ``lock`` to its version."""
    return "".join(f"{project.name}=={project.version}\n" for project in sorted(lock.projects))


def merge_platform_locks(locks: Sequence[Lock], platforms: Sequence[Platform], target: str,
                         inputs_sha256: str) -> Lock:
    """One lock from each platform's (``locks[i]`` resolved for ``platforms[i]``).

    A project gets one wheel per platform it exists on, or one ``""`` wheel when every platform
    uses the same file (a pure wheel); its requirements are the union over the platforms.
    """
    versions: dict[str, set[str]] = {}
    found: dict[str, list[tuple[Platform, LockedProject]]] = {}
    for platform, lock in zip(platforms, locks, strict=True):
        for project in lock.projects:
            versions.setdefault(project.name, set()).add(project.version)
            found.setdefault(project.name, []).append((platform, project))
    split = {name: sorted(v) for name, v in versions.items() if len(v) > 1}
    if split:
        raise PythonLockError(
            "the platforms resolved to different versions despite the constraints: "
            + "; ".join(f"{name} {' / '.join(v)}" for name, v in sorted(split.items())),
            hint="pin those projects in requirements.in, then run ./pbuild lock --python",
        )
    projects = []
    for name, entries in sorted(found.items()):
        files = {(project.filename, project.sha256) for _, project in entries}
        if len(entries) == len(platforms) and len(files) == 1:
            wheels = [LockedWheel("", entries[0][1].filename, entries[0][1].sha256)]
        else:
            wheels = [LockedWheel(str(platform), project.filename, project.sha256) for platform, project in entries]
        requires = tuple(sorted({dep for _, project in entries for dep in project.requires}))
        projects.append(LockedProject.of_wheels(name, entries[0][1].version, wheels, requires))
    return Lock(inputs_sha256=inputs_sha256, target=target, projects=tuple(projects),
                platforms=tuple(str(p) for p in platforms))


def _target_report(target: PythonTarget, requirements_path: str, tmp: str, *, constraints: str = "",
                   platform: Platform | None = None, pins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """pip's report for ``target``, re-resolved with the dependencies pip's host markers dropped
    (:func:`missing_requirements`) added as requirements until none is missing."""
    extra: list[str] = []
    for _ in range(10):  # each round adds at least one requirement; real graphs settle in one or two
        report = _pip_report(target, requirements_path, tmp, constraints=constraints, platform=platform, extra=extra,
                             pins=pins or {})
        missing = [r for r in missing_requirements(report, target) if r not in extra]
        if not missing:
            return report
        extra += missing
    raise PythonLockError(f"the dependencies for {target.describe()} did not settle: {', '.join(extra)}",
                          location=Location(requirements_path))


def _pip_report(target: PythonTarget, requirements_path: str, tmp: str, *, constraints: str = "",
                platform: Platform | None = None, extra: Sequence[str] = (),
                pins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """pip's installation report of resolving ``requirements_path`` for ``target`` (downloads only metadata)."""
    report_path = os.path.join(tmp, f"report-{target.platform}.json")
    argv = [
        *pip_command(), "install", "--dry-run", "--ignore-installed",
        # Quiet hides the resolver's "The conflict is caused by" lines, which name an unmet constraint.
        *(["--quiet"] if not constraints else []),
        "--no-input", "--progress-bar", "off", "--report", report_path,
        "--target", os.path.join(tmp, "target"), *target.pip_args(), "-r", requirements_path,
        *(["-c", constraints] if constraints else []), *extra,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp, check=False)
    if result.returncode != 0:
        output = result.stderr + result.stdout
        if constraints and platform is not None:
            raise _constraint_error(output, target, platform, requirements_path, tmp, pins or {})
        raise _resolution_error(output, target, requirements_path)
    with open(report_path, encoding="utf-8") as handle:
        report: dict[str, Any] = json.load(handle)
    return report


def _constraint_error(output: str, target: PythonTarget, platform: Platform, requirements_path: str,
                      tmp: str, pins: Mapping[str, str]) -> PythonLockError:
    """Why a platform could not use the first platform's versions: a :class:`NoWheelError` for the
    pinned project that has no wheel there at that version, else pip's own words.

    pip names it as an unmet constraint (``(constraint) name==1.0``) or, when requirements.in pins
    the version itself, as ``No matching distribution found for name==1.0``."""
    candidates = list(_CONSTRAINT_RE.findall(output))
    for spec in _NO_MATCH_RE.findall(output):
        try:
            name = normalize_name(Requirement(spec).name)
        except InvalidRequirement:
            continue
        if name in pins:
            candidates.append((name, pins[name]))
    for name, version in candidates:
        versions = wheel_versions(name, version, target, tmp)
        if versions is None:
            continue
        having = ", ".join(versions) if versions else "none"
        return NoWheelError(
            f"{name} {version} has no wheel for {platform} ({target.platform}, python {target.version}, "
            f"abi {target.abi}); versions of {name} with a wheel for {platform}: {having}",
            location=Location(requirements_path),
            hint=(f"pin one of those versions in {REQUIREMENTS_IN} (e.g. {name}=={versions[-1]}), or drop "
                  if versions else "drop ") + f"{platform} from [platforms] locks in WORKSPACE.toml",
        )
    return _resolution_error(output, target, requirements_path)


def wheel_versions(name: str, version: str, target: PythonTarget, tmp: str) -> list[str] | None:
    """None when ``name==version`` has a wheel for ``target``; else the versions that do, as pip lists them."""
    argv = [
        *pip_command(), "install", "--dry-run", "--ignore-installed", "--quiet", "--no-deps", "--no-input",
        "--progress-bar", "off", "--target", os.path.join(tmp, "probe"), *target.pip_args(), f"{name}=={version}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp, check=False)
    match = _FROM_VERSIONS_RE.search(result.stderr + result.stdout)
    if result.returncode == 0 or not match:
        return None
    return [v.strip() for v in match.group(1).split(",") if v.strip() and v.strip() != "none"]


def missing_requirements(report: Mapping[str, Any], target: PythonTarget) -> list[str]:
    """Requirements that apply on ``target`` but that pip left out of ``report``, without their markers.

    pip evaluates environment markers for the machine it runs on even with ``--platform``, so a
    dependency marked ``platform_machine == "aarch64"`` is dropped when an x86_64 host locks for arm64.
    """
    missing: set[str] = set()
    _edges(report, target, missing)
    return sorted(missing)


def _edges(report: Mapping[str, Any], target: PythonTarget,
           missing: set[str] | None = None) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """The report's projects and each one's direct deps on ``target``; requirements that apply there
    but name no project of the report are added to ``missing`` (marker dropped)."""
    items = {normalize_name(item["metadata"]["name"]): item for item in report.get("install", [])}
    extras = {name: {normalize_name(e) for e in item.get("requested_extras") or ()} for name, item in items.items()}
    environment = target.marker_environment()
    edges: dict[str, set[str]] = {name: set() for name in items}
    # Extras asked for by a dependent switch on more of a project's Requires-Dist: iterate until stable.
    changed = True
    while changed:
        changed = False
        for name, item in items.items():
            for requirement in _applicable(item["metadata"].get("requires_dist") or (), extras[name], environment):
                dep = normalize_name(requirement.name)
                if dep not in items:
                    if missing is not None:
                        requirement.marker = None
                        missing.add(str(requirement))
                    continue
                edges[name].add(dep)
                wanted = {normalize_name(e) for e in requirement.extras}
                if not wanted <= extras[dep]:
                    extras[dep] |= wanted
                    changed = True
    return items, edges


def lock_from_report(report: Mapping[str, Any], target: PythonTarget, inputs_sha256: str) -> Lock:
    """Turn pip's installation report into a :class:`Lock` with each project's direct deps."""
    items, edges = _edges(report, target)
    projects = []
    for name, item in items.items():
        url = item["download_info"]["url"]
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if not filename.endswith(".whl"):
            raise NoWheelError(f"{name} resolved to {filename}, which is not a wheel",
                               hint=f"pbuild only uses wheels; find a wheel for {target.platform}")
        sha256 = (item["download_info"].get("archive_info", {}).get("hashes") or {}).get("sha256")
        if not sha256:
            sha256 = _hash_url(url)
        projects.append(LockedProject(
            name=name, version=item["metadata"]["version"], filename=filename, sha256=sha256,
            requires=tuple(sorted(edges[name])),
        ))
    return Lock(inputs_sha256=inputs_sha256, target=target.describe(), projects=tuple(sorted(projects)))


def _applicable(requires_dist: Iterable[str], extras: set[str], environment: dict[str, str]) -> list[Requirement]:
    """The requirements of ``requires_dist`` that apply on the target with the given extras."""
    found = []
    for text in requires_dist:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker: Marker | None = requirement.marker
        if marker is None:
            found.append(requirement)
            continue
        for extra in sorted(extras) or [""]:
            if marker.evaluate({**environment, "extra": extra}):
                found.append(requirement)
                break
    return found


def _hash_url(url: str) -> str:
    """sha256 of an artifact pip chose without a hash in the index (a find-links folder)."""
    digest = hashlib.sha256()
    # urllib honours the same proxies pip does; the URL came from the user's own configuration.
    with urllib.request.urlopen(url) as response:  # noqa: S310 - only file:// and the user's index
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolution_error(output: str, target: PythonTarget, requirements_path: str) -> PythonLockError:
    lines = [line for line in output.splitlines() if "is ignored: it is neither a file nor a directory" not in line]
    match = _NO_MATCH_RE.search(output)
    if match:
        name = match.group(1)
        return NoWheelError(
            f"no wheel of {name} for the target platform {target.platform} "
            f"(python {target.version}, abi {target.abi})",
            location=Location(requirements_path),
            hint=f"pick a version of {name} that publishes such a wheel, or change [python] in WORKSPACE.toml",
        )
    tail = "\n".join(lines[-15:])
    return PythonLockError(
        f"pip could not resolve the requirements for {target.describe()}:\n{tail}",
        location=Location(requirements_path),
        hint="fix the requirement named above; pip's index comes from your pip configuration",
    )


def read_workspace(workspace_root: str) -> dict[str, Any]:
    """The parsed ``WORKSPACE.toml`` of ``workspace_root`` (a :class:`WorkspaceError` if unreadable)."""
    path = os.path.join(workspace_root, "WORKSPACE.toml")
    try:
        with open(path, "rb") as handle:
            return load_toml(handle.read())
    except FileNotFoundError:
        raise WorkspaceError(f"no WORKSPACE.toml in {workspace_root}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkspaceError(f"WORKSPACE.toml is not valid TOML: {exc}", location=Location(path)) from None
