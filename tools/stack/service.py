"""One service -> the launcher's ``RunOptions`` for its container; Compose's restart policies."""

from __future__ import annotations

from pbuild.tools.launcher.config import PortMapping, RunOptions, Volume
from pbuild.tools.stack import network, state
from pbuild.tools.stack.network import StackNetwork
from pbuild.tools.stack.spec import PortSpec, RestartPolicy, ServiceSpec, container_name

LABEL_STACK = "pbuild.stack"
LABEL_SERVICE = "pbuild.stack.service"
LABEL_CONFIG_HASH = "pbuild.stack.config-hash"


def run_options(
    stack: str,
    service: ServiceSpec,
    *,
    config_hash: str,
    net: StackNetwork,
    address: str,
    hosts: tuple[tuple[str, ...], ...],
) -> RunOptions:
    """The container of ``service``: detached (the supervisor owns its output), named
    ``<stack>-<service>-1``, on the stack's network at ``address``, labelled with its stack,
    service and config hash."""
    entrypoint: str | None = None
    command: tuple[str, ...] = service.command or ()
    if service.entrypoint is not None:
        # The launcher's --entrypoint is one path (Docker's flag); Compose's is an argv whose
        # tail comes before the command, and which drops the image's Cmd as Docker does.
        entrypoint = service.entrypoint[0] if service.entrypoint else ""
        command = (*service.entrypoint[1:], *command)
    volumes = tuple(
        Volume(
            v.source if v.kind == "bind" else state.ensure_volume(stack, v.source), v.target, v.read_only
        )
        for v in service.volumes
    )
    return RunOptions(
        image=service.image,
        command=command,
        entrypoint=entrypoint,
        env=tuple(f"{name}={value}" for name, value in service.environment),
        volumes=volumes,
        workdir=service.working_dir,
        user=service.user,
        name=container_name(stack, service.name),
        detach=True,
        publish=tuple(PortMapping(p.host_port, p.container_port, p.protocol, p.host_ip) for p in service.ports),
        join=network.join_record(net, address, hosts, service.outbound),
        labels=((LABEL_STACK, stack), (LABEL_SERVICE, service.name), (LABEL_CONFIG_HASH, config_hash)),
    )


def hosts_file(container: str, net: StackNetwork, address: str, hosts: tuple[tuple[str, ...], ...]) -> bytes:
    """The ``/etc/hosts`` the launcher writes for a container of the stack (its own format, so a
    running container's file can be rewritten when the stack gains a service)."""
    from pbuild.tools.launcher.config import ContainerSpec
    from pbuild.tools.launcher.mounts import generated_files

    options = RunOptions(image="", name=container, join=network.join_record(net, address, hosts))
    spec = ContainerSpec(argv=(), env=(), workdir="/", user="0", hostname=container, options=options)
    return generated_files(spec)["hosts"]


def port_text(port: PortSpec) -> str:
    """As ``ps`` shows a published port: ``127.0.0.1:18080->8080/tcp``."""
    return f"{port.host_ip}:{port.host_port}->{port.container_port}/{port.protocol}"


def restarts_after(policy: RestartPolicy, exit_code: int) -> bool:
    """Does a container that ended with ``exit_code`` start again? (``down`` stops the
    supervisor from restarting anything, which is all ``unless-stopped`` adds to ``always``.)"""
    if policy in ("always", "unless-stopped"):
        return True
    return policy == "on-failure" and exit_code != 0


BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_S = 10.0


def backoff(failures_in_a_row: int) -> float:
    """Docker's restart delay: 100 ms, doubled after each quick exit, at most 10 s (a container
    that ran for :data:`BACKOFF_RESET_S` starts the count again)."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures_in_a_row)))
