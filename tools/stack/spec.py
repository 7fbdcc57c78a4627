"""The record of a stack: what ``pbuild up`` is asked to run, in Compose's words.

One ``StackSpec`` comes from a ``stack`` target (``pbuild.rules.stack``) or from a Compose file
(``compose.py``); the supervisor consumes it. Every path in a *resolved* spec is absolute and
every image is an image the launcher can open (``oci:PATH`` or ``docker-archive:PATH``) with its
manifest digest, so nothing downstream needs the workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DependsCondition = Literal["service_started", "service_healthy", "service_completed_successfully"]
RestartPolicy = Literal["no", "on-failure", "always", "unless-stopped"]


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


def start_order(spec: StackSpec) -> list[list[str]]:
    """The services in dependency order, grouped in waves that may start together; a cycle or
    an unknown dependency raises ``StackError`` naming the services."""
    raise NotImplementedError  # contract: the spec helper implements it


def config_hash(service: ServiceSpec) -> str:
    """A digest of everything that makes a service what it is (image digest included); ``up``
    recreates a running service exactly when this changed."""
    raise NotImplementedError  # contract: the spec helper implements it


def to_json(spec: StackSpec) -> bytes:
    """Canonical JSON (``pbuild.lib.determinism.canonical_json``) of ``spec``."""
    raise NotImplementedError  # contract: the spec helper implements it


def from_json(data: bytes) -> StackSpec:
    """The inverse of :func:`to_json`; a ``StackError`` for anything malformed."""
    raise NotImplementedError  # contract: the spec helper implements it
