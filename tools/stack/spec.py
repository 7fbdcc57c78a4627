"""The record of a stack: what ``pbuild up`` is asked to run, in Compose's words.

One ``StackSpec`` comes from a ``stack`` target (``pbuild.rules.stack``) or from a Compose file
(``compose.py``); the supervisor consumes it. Every path in a *resolved* spec is absolute and
every image is an image the launcher can open (``oci:PATH`` or ``docker-archive:PATH``) with its
manifest digest, so nothing downstream needs the workspace.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from pbuild.lib.determinism import canonical_json
from pbuild.lib.errors import EXIT_BAD_INPUT
from pbuild.tools.stack.errors import StackError

DependsCondition = Literal["service_started", "service_healthy", "service_completed_successfully"]
RestartPolicy = Literal["no", "on-failure", "always", "unless-stopped"]
CONDITIONS: tuple[str, ...] = get_args(DependsCondition)
RESTART_POLICIES: tuple[str, ...] = get_args(RestartPolicy)

JSON_VERSION = 1
"""The version of :func:`to_json`'s form; :func:`from_json` refuses any other."""

# Compose's rule for a project name (lowercase, so it is also a valid container-name prefix), and
# its rule for service names (what `<stack>-<service>-1` and /etc/hosts can carry).
_PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# How ``ServiceSpec.image`` says where an image comes from: the launcher opens the first two; a
# Compose file may also name a pbuild label (built by the command) or a registry reference.
IMAGE_PREFIXES = {"oci:": "oci", "docker-archive:": "docker-archive", "pbuild:": "label", "docker://": "registry"}
ImageKind = Literal["oci", "docker-archive", "label", "registry"]


@dataclass(frozen=True)
class PortSpec:
    """``[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]``; HOST_IP defaults to 127.0.0.1 (loopback)."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class VolumeSpec:
    """``SOURCE:TARGET[:ro]``: a bind mount (``kind="bind"``, ``source`` an absolute host path once
    resolved; relative to the package or the Compose file before) or a named volume
    (``kind="volume"``, ``source`` the volume's name, kept by the stack until ``down -v``)."""

    kind: Literal["bind", "volume"]
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Healthcheck:
    """Compose's healthcheck: ``test`` is the argv run inside the container (``CMD-SHELL`` forms
    become ``["/bin/sh", "-c", ...]``); healthy after one success, unhealthy after ``retries``
    failures in a row (a failure during ``start_period`` does not count)."""

    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0


@dataclass(frozen=True)
class Dependency:
    service: str
    condition: DependsCondition = "service_started"


@dataclass(frozen=True)
class ServiceSpec:
    """One service. ``image`` is what the launcher opens; ``image_digest`` the manifest digest
    (part of the config hash: a rebuilt image recreates the service)."""

    name: str
    image: str
    image_digest: str = ""
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()
    """Sorted NAME, VALUE pairs, ``env_file`` lines already merged in (the file's first, then
    ``environment``), so the config hash sees the values the service gets."""
    ports: tuple[PortSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    depends_on: tuple[Dependency, ...] = ()
    healthcheck: Healthcheck | None = None
    restart: RestartPolicy = "no"
    working_dir: str | None = None
    user: str | None = None
    outbound: bool = False
    """pbuild's own key: the service may reach beyond the stack (slirp4netns in its namespace)."""


@dataclass(frozen=True)
class StackSpec:
    """A stack: ``name`` (container names are ``<name>-<service>-1``), where it came from
    (``origin``: the target's label or the Compose file's path, shown by ``ps``), and its
    services in the order given."""

    name: str
    origin: str
    services: tuple[ServiceSpec, ...] = field(default_factory=tuple)

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; KeyError when there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


def container_name(stack: str, service: str) -> str:
    """Compose's container name: ``<stack>-<service>-1``."""
    return f"{stack}-{service}-1"




class DependencyError(StackError):
    """``depends_on`` names a service the stack does not have, or the services depend on each
    other in a cycle. ``service`` is the service whose ``depends_on`` is at fault, ``names`` the
    services involved (for a cycle, in order, the first repeated at the end)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, service: str, names: tuple[str, ...], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.service = service
        self.names = names


def bad_input(message: str, hint: str | None = None) -> StackError:
    """A ``StackError`` for input the user must fix (exit 2, as every input error of pbuild)."""
    return StackError(message, hint=hint, exit_code=EXIT_BAD_INPUT)


def image_kind(image: str) -> tuple[ImageKind, str]:
    """Where ``ServiceSpec.image`` comes from and the rest of it: ``("oci", PATH)``,
    ``("docker-archive", PATH)``, ``("label", "//pkg:target")`` or ``("registry", REF)``."""
    for prefix, kind in IMAGE_PREFIXES.items():
        if image.startswith(prefix):
            return kind, image[len(prefix):]  # type: ignore[return-value]
    raise bad_input(f"image {image!r} says neither oci:, docker-archive:, pbuild: nor docker://")


def project_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a stack (Compose's rule), or None."""
    if not _PROJECT_NAME.fullmatch(name):
        return "a stack name is 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter or digit"
    return None


def service_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a service, or None."""
    if not _SERVICE_NAME.fullmatch(name):
        return "a service name is 1 to 63 letters, digits, '-', '_' and '.', starting with a letter or digit"
    return None


def volume_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a volume, or None."""
    if not _VOLUME_NAME.fullmatch(name):
        return "a volume name is letters, digits, '-', '_' and '.', starting with a letter or digit"
    return None


def start_order(spec: StackSpec) -> list[list[str]]:
    """The services in dependency order, grouped in waves that may start together; a cycle or
    an unknown dependency raises ``StackError`` (a :class:`DependencyError`) naming the services.

    Wave ``n`` holds the services whose dependencies all lie in earlier waves; within a wave
    services keep the order the spec gives them, so the order is the same on every run.
    """
    names = [service.name for service in spec.services]
    known = set(names)
    needs: dict[str, list[str]] = {}
    for service in spec.services:
        for dep in service.depends_on:
            if dep.service not in known:
                raise DependencyError(
                    f"service {service.name!r} depends on {dep.service!r}, which the stack does not have",
                    service=service.name, names=(service.name, dep.service),
                    hint=f"the stack's services: {', '.join(names)}")
        needs[service.name] = [dep.service for dep in service.depends_on]
    waves: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(names):
        wave = [n for n in names if n not in placed and all(d in placed for d in needs[n])]
        if not wave:
            cycle = _find_cycle([n for n in names if n not in placed], needs)
            raise DependencyError(
                "services depend on each other in a cycle: " + " -> ".join(cycle),
                service=cycle[0], names=tuple(cycle),
                hint="remove one of these depends_on entries")
        waves.append(wave)
        placed.update(wave)
    return waves


def _find_cycle(left: list[str], needs: dict[str, list[str]]) -> list[str]:
    """A cycle among ``left`` (every one of which waits on another of them), first in spec order:
    follow the first unplaced dependency until a service repeats."""
    remaining = set(left)
    path = [left[0]]
    while True:
        nxt = next(d for d in needs[path[-1]] if d in remaining)
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def check(spec: StackSpec) -> None:
    """Validate what no single service can: the stack's name, unique service names, host ports
    published once, and the dependencies (:func:`start_order`). Raises ``StackError`` (exit 2)."""
    problem = project_name_problem(spec.name)
    if problem:
        raise bad_input(f"stack name {spec.name!r} is not valid: {problem}", hint="set the project name")
    seen: set[str] = set()
    ports: dict[tuple[str, int, str], str] = {}
    for service in spec.services:
        problem = service_name_problem(service.name)
        if problem:
            raise bad_input(f"service name {service.name!r} is not valid: {problem}")
        if service.name in seen:
            raise bad_input(f"service {service.name!r} is defined twice")
        seen.add(service.name)
        for port in service.ports:
            key = (port.host_ip, port.host_port, port.protocol)
            if key in ports:
                raise bad_input(
                    f"service {service.name!r} publishes {port.host_ip}:{port.host_port}/{port.protocol}, "
                    f"which service {ports[key]!r} publishes already",
                    hint="publish each host port once")
            ports[key] = service.name
    start_order(spec)


def config_hash(service: ServiceSpec) -> str:
    """A digest of everything that makes a service what it is (image digest included); ``up``
    recreates a running service exactly when this changed.

    sha256 over the service's canonical JSON (the form :func:`to_json` writes), so the hash is
    the same in every process and on every machine for the same record.
    """
    return "sha256:" + hashlib.sha256(canonical_json(_service_data(service))).hexdigest()


def to_json(spec: StackSpec) -> bytes:
    """Canonical JSON (``pbuild.lib.determinism.canonical_json``) of ``spec``."""
    return canonical_json({"version": JSON_VERSION, "name": spec.name, "origin": spec.origin,
                           "services": [_service_data(s) for s in spec.services]})


def _service_data(service: ServiceSpec) -> dict[str, Any]:
    data = asdict(service)  # tuples become lists, nested records dicts: plain JSON
    data["environment"] = [list(pair) for pair in service.environment]
    return data


def from_json(data: bytes) -> StackSpec:
    """The inverse of :func:`to_json`; a ``StackError`` for anything malformed."""
    import json

    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StackError(f"stack record is not JSON: {exc}") from None
    reader = _Reader()
    try:
        top = reader.table(raw, "stack", {"version", "name", "origin", "services"})
        if top.get("version") != JSON_VERSION:
            raise reader.bad(f"version {top.get('version')!r}, expected {JSON_VERSION}")
        services = tuple(reader.service(s) for s in reader.items(top.get("services"), "services"))
        return StackSpec(name=reader.text(top.get("name"), "name"), origin=reader.text(top.get("origin"), "origin"),
                         services=services)
    except (TypeError, ValueError, KeyError) as exc:
        raise StackError(f"stack record is malformed: {exc}") from None


class _Reader:
    """Type-checked reading of the JSON form (a state file may be damaged or hostile)."""

    def bad(self, what: str) -> ValueError:
        return ValueError(what)

    def table(self, value: Any, where: str, keys: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict) or set(value) - keys:
            raise self.bad(f"{where}: expected a table with keys {sorted(keys)}")
        return value

    def items(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.bad(f"{where}: expected a list")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.bad(f"{where}: expected a string")
        return value

    def number(self, value: Any, where: str, kind: type = float) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
            raise self.bad(f"{where}: expected a number")
        return kind(value)

    def strings(self, value: Any, where: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        return tuple(self.text(v, where) for v in self.items(value, where))

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> Any:
        if value not in allowed:
            raise self.bad(f"{where}: expected one of {', '.join(allowed)}")
        return value

    def service(self, value: Any) -> ServiceSpec:
        keys = set(ServiceSpec.__dataclass_fields__)
        raw = self.table(value, "service", keys)
        if set(raw) != keys:
            raise self.bad(f"service: expected the keys {sorted(keys)}")
        name = self.text(raw["name"], "service name")
        at = f"service {name!r}"
        env = []
        for pair in self.items(raw["environment"], f"{at} environment"):
            items = self.items(pair, f"{at} environment")
            if len(items) != 2:
                raise self.bad(f"{at} environment: expected NAME, VALUE pairs")
            env.append((self.text(items[0], f"{at} environment"), self.text(items[1], f"{at} environment")))
        ports = []
        for port in self.items(raw["ports"], f"{at} ports"):
            p = self.table(port, f"{at} ports", set(PortSpec.__dataclass_fields__))
            ports.append(PortSpec(self.text(p["host_ip"], "host_ip"), self.number(p["host_port"], "host_port", int),
                                  self.number(p["container_port"], "container_port", int),
                                  self.choice(p["protocol"], "protocol", ("tcp", "udp"))))
        volumes = []
        for volume in self.items(raw["volumes"], f"{at} volumes"):
            v = self.table(volume, f"{at} volumes", set(VolumeSpec.__dataclass_fields__))
            if not isinstance(v["read_only"], bool):
                raise self.bad(f"{at} volumes: read_only is true or false")
            volumes.append(VolumeSpec(self.choice(v["kind"], "kind", ("bind", "volume")),
                                      self.text(v["source"], "source"), self.text(v["target"], "target"),
                                      v["read_only"]))
        deps = []
        for dep in self.items(raw["depends_on"], f"{at} depends_on"):
            d = self.table(dep, f"{at} depends_on", {"service", "condition"})
            deps.append(Dependency(self.text(d["service"], "service"),
                                   self.choice(d["condition"], "condition", CONDITIONS)))
        health = None
        if raw["healthcheck"] is not None:
            h = self.table(raw["healthcheck"], f"{at} healthcheck", set(Healthcheck.__dataclass_fields__))
            health = Healthcheck(self.strings(h["test"], "test") or (), self.number(h["interval_s"], "interval_s"),
                                 self.number(h["timeout_s"], "timeout_s"), self.number(h["retries"], "retries", int),
                                 self.number(h["start_period_s"], "start_period_s"))
        optional = {k: (None if raw[k] is None else self.text(raw[k], k)) for k in ("working_dir", "user")}
        if not isinstance(raw["outbound"], bool):
            raise self.bad(f"{at} outbound: expected true or false")
        return ServiceSpec(
            name=name, image=self.text(raw["image"], "image"), image_digest=self.text(raw["image_digest"], "image_digest"),
            command=self.strings(raw["command"], "command"), entrypoint=self.strings(raw["entrypoint"], "entrypoint"),
            environment=tuple(env), ports=tuple(ports), volumes=tuple(volumes), depends_on=tuple(deps),
            healthcheck=health, restart=self.choice(raw["restart"], "restart", RESTART_POLICIES),
            working_dir=optional["working_dir"], user=optional["user"], outbound=raw["outbound"])


def replace_image(spec: StackSpec, service: str, image: str, digest: str) -> StackSpec:
    """``spec`` with one service's image (and its manifest digest) replaced: what ``up`` does
    once it has built a label or pulled a reference of a Compose file."""
    spec.service(service)  # KeyError for a name the stack does not have
    return replace(spec, services=tuple(replace(s, image=image, image_digest=digest) if s.name == service else s
                                        for s in spec.services))


def resolve(spec: StackSpec, root: str) -> StackSpec:
    """``spec`` with every relative path made absolute below ``root`` (the workspace for a
    ``stack`` target, the Compose file's folder for a Compose file): ``oci:``/``docker-archive:``
    images and bind sources. A relative path that leads outside ``root`` (by ``..`` or a
    symbolic link) is refused; absolute paths are kept (only a Compose file can have them).
    An image still named by label or reference is refused: build or pull it first
    (:func:`replace_image`)."""
    real_root = os.path.realpath(root)

    def inside(rel: str, what: str) -> str:
        if os.path.isabs(rel):
            return rel
        path = os.path.realpath(os.path.join(real_root, rel))
        if path != real_root and not path.startswith(real_root + os.sep):
            raise bad_input(f"{what} {rel!r} leads outside {root}",
                            hint="bind and image paths must stay inside the folder they are relative to")
        return path

    services = []
    for service in spec.services:
        kind, rest = image_kind(service.image)
        if kind in ("label", "registry"):
            raise StackError(f"service {service.name!r}: image {rest!r} is not built or pulled yet",
                             hint="build the label (or pull the reference) and call replace_image first")
        image = ("oci:" if kind == "oci" else "docker-archive:") + inside(rest, f"service {service.name!r}: image")
        volumes = tuple(replace(v, source=inside(v.source, f"service {service.name!r}: bind source"))
                        if v.kind == "bind" else v for v in service.volumes)
        services.append(replace(service, image=image, volumes=volumes))
    return replace(spec, services=tuple(services))
