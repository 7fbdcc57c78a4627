"""A service -> the launcher's RunOptions; restart policies and their backoff."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbuild.tools.launcher.config import PortMapping, Volume
from pbuild.tools.stack.network import StackNetwork
from pbuild.tools.stack.service import backoff, port_text, restarts_after, run_options
from pbuild.tools.stack.spec import PortSpec, ServiceSpec, VolumeSpec

NET = StackNetwork(holder_pid=10, holder_start=20, subnet="10.89.0.0/24", gateway="10.89.0.1", single_map=False)
HOSTS = (("10.89.0.2", "api", "web-api-1"),)


def options(service: ServiceSpec):  # type: ignore[no-untyped-def]
    return run_options("web", service, config_hash="sha256:h", net=NET, address="10.89.0.2/24", hosts=HOSTS)


def test_the_container_of_a_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBUILD_LAYER_STORE", str(tmp_path / "layers"))
    service = ServiceSpec(
        "api", "oci:/img", "sha256:d", command=("serve", "--port", "8080"), environment=(("A", "1"), ("B", "x=y")),
        ports=(PortSpec("127.0.0.1", 18080, 8080),), working_dir="/srv", user="app", outbound=True,
        volumes=(VolumeSpec("bind", "/host/static", "/static", read_only=True), VolumeSpec("volume", "cache", "/cache")),
    )  # fmt: skip
    got = options(service)
    assert got.name == "web-api-1" and got.detach and got.image == "oci:/img"
    assert got.command == ("serve", "--port", "8080") and got.entrypoint is None
    assert got.env == ("A=1", "B=x=y") and got.workdir == "/srv" and got.user == "app"
    assert got.publish == (PortMapping(18080, 8080, "tcp", "127.0.0.1"),)
    assert got.volumes == (Volume("/host/static", "/static", True), Volume(str(tmp_path / "volumes/web_cache"), "/cache", False))
    assert (tmp_path / "volumes/web_cache").is_dir()  # a named volume is made on first use
    assert got.join is not None and got.join.address == "10.89.0.2/24" and got.join.outbound
    assert got.join.holder_pid == 10 and got.join.hosts == HOSTS
    assert dict(got.labels) == {"pbuild.stack": "web", "pbuild.stack.service": "api", "pbuild.stack.config-hash": "sha256:h"}


@pytest.mark.parametrize(("entrypoint", "command", "want_entrypoint", "want_command"), [
    (("/bin/sh", "-c"), ("echo hi",), "/bin/sh", ("-c", "echo hi")),   # Compose's argv: the tail first
    (("/app",), None, "/app", ()),                                      # the image's Cmd is dropped
    ((), ("x",), "", ("x",)),                                           # an empty entrypoint clears it
])  # fmt: skip
def test_compose_entrypoints_become_the_launchers(entrypoint: tuple[str, ...], command: tuple[str, ...] | None,
                                                  want_entrypoint: str, want_command: tuple[str, ...]) -> None:  # fmt: skip
    got = options(ServiceSpec("api", "oci:/img", entrypoint=entrypoint, command=command))
    assert (got.entrypoint, got.command) == (want_entrypoint, want_command)


def test_restart_policies() -> None:
    assert [restarts_after("no", c) for c in (0, 1)] == [False, False]
    assert [restarts_after("on-failure", c) for c in (0, 1, 137)] == [False, True, True]
    assert [restarts_after(p, 0) for p in ("always", "unless-stopped")] == [True, True]


def test_backoff_doubles_up_to_ten_seconds() -> None:
    assert [backoff(n) for n in (0, 1, 2, 3)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff(20) == 10.0 and backoff(-1) == 0.1


def test_ports_as_ps_shows_them() -> None:
    assert port_text(PortSpec("127.0.0.1", 5353, 53, "udp")) == "127.0.0.1:5353->53/udp"
