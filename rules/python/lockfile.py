"""The lock file ``third_party/python/requirements.lock``: pip's hash-checking format plus comments.

pip reads it as is (``pip install --no-deps --require-hashes -r requirements.lock``); pbuild reads
the comments too: the header pins the inputs (a hash of ``requirements.in`` and the target), and
each project records its wheel's file name and its own dependencies, so the generated
``//third_party/python:<name>`` targets carry their deps without a resolver at build time::

    numpy==2.4.6 \\
        --hash=sha256:89cd...
        # wheel: numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
        # requires: (none)

A lock for several platforms (``[platforms] locks``) is version 2: each project lists one hash per
wheel line, in the same order, and a ``# wheel <platform>:`` line per platform (``# wheel:`` alone
when the same file serves every platform, as a pure wheel does)::

    numpy==2.4.6 \\
        --hash=sha256:<amd64 wheel> \\
        --hash=sha256:<arm64 wheel>
        # wheel linux/amd64: numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
        # wheel linux/arm64: numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl
        # requires: (none)

pip still installs it: ``--require-hashes`` accepts any of a requirement's hashes.
No index URL or host is recorded; hosts come from the user's pip configuration.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pbuild.engine.errors import Location, PbuildError
from pbuild.rules.python.config import described_platforms

LOCK_VERSION = "1"  # one platform: one hash and one ``# wheel:`` line per project
LOCK_VERSION_PLATFORMS = "2"  # several platforms: ``# wheel <platform>:`` lines, one hash each
_HEADER_INPUTS = "# pbuild-inputs-sha256: "
_HEADER_TARGET = "# pbuild-target: "
_HEADER_VERSION = "# pbuild-lock-version: "
_REQ_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)\s*\\?$")
_HASH_RE = re.compile(r"^--hash=sha256:([0-9a-f]{64})\s*\\?$")
_WHEEL_RE = re.compile(r"^# wheel( [^\s:]+)?:\s*(\S+)$")
_NAME_RE = re.compile(r"[-_.]+")


class PythonLockError(PbuildError):
    """The lock is missing, out of date, or not in the expected format."""


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name (``Typing_Extensions`` -> ``typing-extensions``)."""
    return _NAME_RE.sub("-", name).lower()


@dataclass(frozen=True, order=True)
class LockedWheel:
    """The wheel file a locked project uses on one platform."""

    platform: str  # OCI spelling (``linux/arm64``); "" = every platform of the lock
    filename: str
    sha256: str


@dataclass(frozen=True, order=True)
class LockedProject:
    """One locked project: its wheel for each platform and its direct dependencies.

    ``filename``/``sha256`` are the first platform's wheel (all a single-platform lock has, and what
    tool locks and the pex code read); ``wheels`` defaults to that one wheel for every platform.
    """

    name: str  # normalized
    version: str
    filename: str
    sha256: str
    requires: tuple[str, ...] = ()  # normalized names, sorted
    wheels: tuple[LockedWheel, ...] = ()  # in the order of the lock's platforms

    def __post_init__(self) -> None:
        if not self.wheels:
            object.__setattr__(self, "wheels", (LockedWheel("", self.filename, self.sha256),))

    @classmethod
    def of_wheels(cls, name: str, version: str, wheels: Sequence[LockedWheel],
                  requires: tuple[str, ...] = ()) -> LockedProject:
        """A project from its per-platform wheels (the first one is ``filename``/``sha256``)."""
        return cls(name=name, version=version, filename=wheels[0].filename, sha256=wheels[0].sha256,
                   requires=requires, wheels=tuple(wheels))

    def wheel_for(self, platform: str) -> LockedWheel | None:
        """The wheel for ``platform``, or None when the project does not exist there (a marker)."""
        for wheel in self.wheels:
            if wheel.platform in ("", platform):
                return wheel
        return None


@dataclass(frozen=True)
class Lock:
    """A parsed lock file; ``platforms`` is () for a single-platform (version 1) lock."""

    inputs_sha256: str
    target: str
    projects: tuple[LockedProject, ...]
    platforms: tuple[str, ...] = ()

    def by_name(self) -> dict[str, LockedProject]:
        return {project.name: project for project in self.projects}


def inputs_digest(requirements_in: str) -> str:
    """The hash recorded in the header: of ``requirements.in`` with comments and blanks dropped.

    Whitespace and comments do not change a resolution, so editing them does not make a lock stale.
    """
    lines = []
    for raw in requirements_in.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("-") else raw.strip()
        if line:
            lines.append(line)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def render_lock(lock: Lock, *, command: str = "./pbuild lock --python", source: str = "requirements.in",
                lock_name: str = "requirements.lock") -> str:
    """The lock file text; projects sorted by name so a re-lock only shows real changes.

    ``command``, ``source`` and ``lock_name`` only word the header comment (tool locks are made
    by ``./pbuild lock --tools`` from their own requirements).
    """
    several = len(lock.platforms) > 1
    out = [
        f"# Generated by `{command}` from {source}: do not edit by hand.",
        ("# Every project is pinned to one wheel per platform of the target below; install elsewhere with"
         if several else "# Every project is pinned to one wheel for the target below; install elsewhere with"),
        f"#   pip install --no-deps --require-hashes -r {lock_name}",
        f"{_HEADER_VERSION}{LOCK_VERSION_PLATFORMS if several else LOCK_VERSION}",
        f"{_HEADER_INPUTS}{lock.inputs_sha256}",
        f"{_HEADER_TARGET}{lock.target}",
        "",
    ]
    for project in sorted(lock.projects):
        out.append(f"{project.name}=={project.version} \\")
        wheels = project.wheels if several else (LockedWheel("", project.filename, project.sha256),)
        out.extend(f"    --hash=sha256:{wheel.sha256}" + (" \\" if i < len(wheels) - 1 else "")
                   for i, wheel in enumerate(wheels))
        out.extend(f"    # wheel{' ' + wheel.platform if wheel.platform else ''}: {wheel.filename}"
                   for wheel in wheels)
        out.append(f"    # requires: {' '.join(project.requires) if project.requires else '(none)'}")
    return "\n".join(out) + "\n"


def parse_lock(text: str, *, path: str = "third_party/python/requirements.lock",
               relock: str = "./pbuild lock --python") -> Lock:
    """Parse a lock written by :func:`render_lock` (version 1 or 2); every problem is reported with its line."""
    inputs = target = version = ""
    projects: list[LockedProject] = []
    current: _Entry | None = None
    entries: list[_Entry] = []
    problems: list[str] = []

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(_HEADER_INPUTS.strip()):
            inputs = line[len(_HEADER_INPUTS):].strip()
        elif line.startswith(_HEADER_TARGET.strip()):
            target = line[len(_HEADER_TARGET):].strip()
        elif line.startswith(_HEADER_VERSION.strip()):
            version = line[len(_HEADER_VERSION):].strip()
        elif line.startswith("# wheel") and current is not None:
            match = _WHEEL_RE.match(line)
            if not match:
                problems.append(f"line {number}: expected '# wheel: <file>' or '# wheel <platform>: <file>', "
                                f"got {line!r}")
            else:
                current.wheels.append(((match.group(1) or "").strip(), match.group(2), number))
        elif line.startswith("# requires:") and current is not None:
            names = line[len("# requires:"):].split()
            current.requires = tuple(n for n in names if n != "(none)")
        elif line.startswith("#"):
            continue
        elif line.startswith("--hash=") and current is not None:
            match = _HASH_RE.match(line)
            if not match:
                problems.append(f"line {number}: bad hash {line!r} (expected --hash=sha256:<64 hex>)")
            else:
                current.hashes.append(match.group(1))
        else:
            match = _REQ_RE.match(line)
            if not match:
                problems.append(f"line {number}: expected 'name==version \\', got {line!r}")
                continue
            current = _Entry(normalize_name(match.group(1)), match.group(2), number)
            entries.append(current)
    platforms: tuple[str, ...] = ()
    if version == LOCK_VERSION_PLATFORMS:
        platforms = described_platforms(target)
        if len(platforms) < 2:
            problems.append(f"the '{_HEADER_TARGET.strip()}' header names no platforms "
                            f"(expected '... for linux/amd64 linux/arm64'), got {target!r}")
    elif version != LOCK_VERSION:
        problems.append(f"missing or unknown '{_HEADER_VERSION.strip()}' header "
                        f"(expected {LOCK_VERSION} or {LOCK_VERSION_PLATFORMS})")
    for entry in entries:
        project = entry.project(platforms, version == LOCK_VERSION_PLATFORMS, problems)
        if project is not None:
            projects.append(project)
    if not inputs:
        problems.append(f"missing '{_HEADER_INPUTS.strip()}' header")
    if problems:
        raise PythonLockError(
            "the lock file is damaged: " + "; ".join(problems),
            location=Location(path),
            hint=f"regenerate it with {relock}",
        )
    return Lock(inputs_sha256=inputs, target=target, projects=tuple(projects), platforms=platforms)


@dataclass
class _Entry:
    """A project's lines as read, checked into a :class:`LockedProject` once the file is read."""

    name: str
    version: str
    line: int
    hashes: list[str] = field(default_factory=list)
    wheels: list[tuple[str, str, int]] = field(default_factory=list)  # (platform, filename, line)
    requires: tuple[str, ...] | None = None

    def project(self, platforms: tuple[str, ...], several: bool, problems: list[str]) -> LockedProject | None:
        """The checked project, or None after adding its problems to ``problems``."""
        where = f"line {self.line}: {self.name}"
        missing = [what for what, seen in (("sha256", self.hashes), ("filename", self.wheels),
                                           ("requires", self.requires is not None)) if not seen]
        if missing:
            problems.append(f"{where} lacks {', '.join(missing)}")
            return None
        if not several:
            bad = [f"{where} has more than one hash"] if len(self.hashes) > 1 else []
            if len(self.wheels) > 1 or self.wheels[0][0]:
                bad.append(f"line {self.wheels[-1][2]}: {self.name} has a per-platform wheel line in a "
                           f"version {LOCK_VERSION} lock")
            problems.extend(bad)
            if bad:
                return None
            return LockedProject(self.name, self.version, self.wheels[0][1], self.hashes[0], self.requires or ())
        count = len(problems)
        if len(self.hashes) != len(self.wheels):
            problems.append(f"{where} has {len(self.hashes)} hash(es) but {len(self.wheels)} wheel line(s) "
                            f"(lines {self.wheels[0][2]}-{self.wheels[-1][2]}); each wheel line needs its hash")
        named = [platform for platform, _, _ in self.wheels]
        if "" in named and len(named) > 1:
            problems.append(f"line {self.wheels[0][2]}: {self.name} has '# wheel:' (every platform) beside "
                            "per-platform wheel lines")
        for platform, _, line in self.wheels:
            if platform and platform not in platforms:
                problems.append(f"line {line}: {self.name}'s wheel is for {platform}, which the lock's target "
                                f"does not cover ({' '.join(platforms)})")
        if len(set(named)) != len(named):
            problems.append(f"{where} names a platform in more than one wheel line")
        if len(problems) > count:
            return None
        # Hashes pair with the wheel lines in order (pip only needs the set; pbuild needs the pairs).
        wheels = [LockedWheel(platform, filename, sha256)
                  for (platform, filename, _), sha256 in zip(self.wheels, self.hashes, strict=True)]
        return LockedProject.of_wheels(self.name, self.version, wheels, self.requires or ())
