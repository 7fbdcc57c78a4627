"""``pbuild lock --python``: resolve ``requirements.in`` for the target and write the lock.

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
from collections.abc import Iterable, Mapping
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from pbuild.engine.errors import Location, WorkspaceError
from pbuild.lib import atomicio
from pbuild.lib.tomlpos import load_toml
from pbuild.rules.python.config import PythonTarget, read_python_target
from pbuild.rules.python.lockfile import (
    Lock,
    LockedProject,
    PythonLockError,
    inputs_digest,
    normalize_name,
    render_lock,
)
from pbuild.rules.python.wheels import pip_command

REQUIREMENTS_IN = "third_party/python/requirements.in"
REQUIREMENTS_LOCK = "third_party/python/requirements.lock"
_NO_MATCH_RE = re.compile(r"No matching distribution found for ([^\s]+)")


class NoWheelError(PythonLockError):
    """A requirement has no wheel for the target platform."""


def lock_python(workspace_root: str) -> None:
    """Resolve ``third_party/python/requirements.in`` and write ``requirements.lock`` beside it."""
    config = read_workspace(workspace_root)
    target = read_python_target(config, where=os.path.join(workspace_root, "WORKSPACE.toml"))
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
    lock = resolve(requirements_in, target, requirements_path=in_path)
    atomicio.write_text(os.path.join(workspace_root, REQUIREMENTS_LOCK), render_lock(lock), parents=True)
    print(f"pbuild: locked {len(lock.projects)} projects for {target.describe()} into {REQUIREMENTS_LOCK}",
          file=sys.stderr)


def resolve(requirements_in: str, target: PythonTarget, *, requirements_path: str) -> Lock:
    """Resolve with pip for ``target`` and return the :class:`Lock` (nothing is written)."""
    with tempfile.TemporaryDirectory(prefix="pbuild-lock-") as tmp:
        report_path = os.path.join(tmp, "report.json")
        argv = [
            *pip_command(), "install", "--dry-run", "--ignore-installed", "--quiet",
            "--no-input", "--progress-bar", "off", "--report", report_path,
            "--target", os.path.join(tmp, "target"), *target.pip_args(), "-r", requirements_path,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp, check=False)
        if result.returncode != 0:
            raise _resolution_error(result.stderr + result.stdout, target, requirements_path)
        with open(report_path, encoding="utf-8") as handle:
            report = json.load(handle)
        return lock_from_report(report, target, inputs_digest(requirements_in))


def lock_from_report(report: Mapping[str, Any], target: PythonTarget, inputs_sha256: str) -> Lock:
    """Turn pip's installation report into a :class:`Lock` with each project's direct deps."""
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
                    continue  # satisfied elsewhere or excluded by pip (should not happen with --dry-run)
                edges[name].add(dep)
                wanted = {normalize_name(e) for e in requirement.extras}
                if not wanted <= extras[dep]:
                    extras[dep] |= wanted
                    changed = True
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
