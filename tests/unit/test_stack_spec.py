"""The stack record (pbuild.tools.stack.spec) and the service keys both front ends share
(pbuild.tools.stack.parse): order, cycles, the config hash, the JSON form, durations, ports,
volumes, env files, and resolving paths."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pbuild.lib.determinism import canonical_json
from pbuild.lib.errors import EXIT_BAD_INPUT
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.parse import (
    FieldError,
    parse_duration,
    parse_env_lines,
    parse_port,
    parse_service,
    parse_volume,
)
from pbuild.tools.stack.spec import (
    Dependency,
    DependencyError,
    Healthcheck,
    PortSpec,
    ServiceSpec,
    StackSpec,
    VolumeSpec,
    check,
    config_hash,
    container_name,
    from_json,
    image_kind,
    replace_image,
    resolve,
    start_order,
    to_json,
)

from tests.support.paths import REPO


def svc(name: str, *deps: str, **fields: object) -> ServiceSpec:
    return ServiceSpec(name=name, image=f"oci:pbuild-out/app/{name}/oci",
                       depends_on=tuple(Dependency(d) for d in deps), **fields)  # type: ignore[arg-type]


def stack(*services: ServiceSpec) -> StackSpec:
    return StackSpec(name="web", origin="//app:web", services=services)


FULL = ServiceSpec(
    name="frontend", image="oci:pbuild-out/app/frontend/oci", image_digest="sha256:" + "a" * 64,
    command=("serve", "--port", "8080"), entrypoint=("/usr/bin/python3", "-m", "app"),
    environment=(("BACKEND_URL", "http://backend:8080/"), ("Ü", "ünï")),
    ports=(PortSpec("127.0.0.1", 18080, 8080), PortSpec("::1", 18081, 53, "udp")),
    volumes=(VolumeSpec("bind", "app/static", "/srv/static", True), VolumeSpec("volume", "cache", "/var/cache")),
    depends_on=(Dependency("backend", "service_healthy"),),
    healthcheck=Healthcheck(("/bin/sh", "-c", "true"), 1.0, 2.5, 30, 0.5),
    restart="unless-stopped", working_dir="/srv", user="1000:1000", outbound=True,
)


# -- start order ---------------------------------------------------------------------------------

def test_start_order_groups_waves_in_dependency_order_keeping_the_spec_order() -> None:
    spec = stack(svc("proxy", "frontend", "backend"), svc("frontend", "backend"), svc("worker"),
                 svc("backend", "db"), svc("db"))
    assert start_order(spec) == [["worker", "db"], ["backend"], ["frontend"], ["proxy"]]
    assert start_order(spec) == start_order(dataclasses.replace(spec))  # the same on every call


def test_start_order_of_independent_services_is_one_wave() -> None:
    assert start_order(stack(svc("b"), svc("a"), svc("c"))) == [["b", "a", "c"]]


@pytest.mark.parametrize(("services", "cycle"), [
    ((svc("a", "a"),), "a -> a"),
    ((svc("a", "b"), svc("b", "a")), "a -> b -> a"),
    ((svc("x"), svc("a", "b"), svc("b", "c"), svc("c", "a")), "a -> b -> c -> a"),
    ((svc("top", "a"), svc("a", "b"), svc("b", "a")), "a -> b -> a"),
])
def test_a_cycle_is_spelled_out(services: tuple[ServiceSpec, ...], cycle: str) -> None:
    with pytest.raises(DependencyError) as caught:
        start_order(stack(*services))
    assert cycle in caught.value.message
    assert caught.value.names == tuple(cycle.split(" -> "))
    assert caught.value.service == cycle.split(" -> ")[0]
    assert caught.value.exit_code == EXIT_BAD_INPUT


def test_an_unknown_dependency_names_both_services() -> None:
    with pytest.raises(DependencyError) as caught:
        start_order(stack(svc("frontend", "backedn"), svc("backend")))
    assert "'frontend' depends on 'backedn'" in caught.value.message
    assert caught.value.hint and "backend, frontend" not in caught.value.hint and "frontend, backend" in caught.value.hint
    assert caught.value.service == "frontend"


def test_check_refuses_a_host_port_published_twice_and_bad_names() -> None:
    port = PortSpec("127.0.0.1", 8080, 80)
    with pytest.raises(StackError, match="publishes 127.0.0.1:8080/tcp, which service 'a' publishes already"):
        check(stack(svc("a", ports=(port,)), svc("b", ports=(port,))))
    check(stack(svc("a", ports=(port,)), svc("b", ports=(dataclasses.replace(port, protocol="udp"),))))
    with pytest.raises(StackError, match="defined twice"):
        check(stack(svc("a"), svc("a")))
    with pytest.raises(StackError, match="stack name 'Web'"):
        check(dataclasses.replace(stack(svc("a")), name="Web"))
    with pytest.raises(StackError, match="service name '-a'"):
        check(stack(svc("-a")))
    with pytest.raises(DependencyError):
        check(stack(svc("a", "b"), svc("b", "a")))


def test_container_names_are_composes() -> None:
    assert container_name("web", "backend") == "web-backend-1"


# -- config hash ---------------------------------------------------------------------------------

def test_the_config_hash_changes_exactly_when_the_config_changes() -> None:
    base = config_hash(FULL)
    assert base.startswith("sha256:") and len(base) == 7 + 64
    # An equal record made afresh hashes the same.
    assert config_hash(from_json(to_json(stack(FULL))).services[0]) == base
    assert config_hash(dataclasses.replace(FULL, environment=tuple(FULL.environment))) == base
    changes = {
        "name": "frontend2", "image": "oci:pbuild-out/app/other/oci", "image_digest": "sha256:" + "b" * 64,
        "command": ("serve",), "entrypoint": None, "environment": (("BACKEND_URL", "http://backend:8081/"),),
        "ports": (PortSpec("127.0.0.1", 18080, 8081),), "volumes": (VolumeSpec("bind", "app/static", "/srv/static"),),
        "depends_on": (Dependency("backend"),), "healthcheck": Healthcheck(("/bin/sh", "-c", "true"), 1.0, 2.5, 29, 0.5),
        "restart": "always", "working_dir": "/", "user": "0", "outbound": False,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(ServiceSpec)}, "every field is tried"
    seen = {base}
    for field_name, value in changes.items():
        changed = config_hash(dataclasses.replace(FULL, **{field_name: value}))  # type: ignore[arg-type]
        assert changed not in seen, field_name
        seen.add(changed)


def test_the_config_hash_is_the_same_in_another_process() -> None:
    code = ("from pbuild.tools.stack.spec import *\n"
            "s = ServiceSpec('a', 'oci:x', environment=(('B', '2'), ('A', '1')), ports=(PortSpec('127.0.0.1', 1, 2),))\n"
            "print(config_hash(s))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    here = config_hash(ServiceSpec("a", "oci:x", environment=(("B", "2"), ("A", "1")),
                                   ports=(PortSpec("127.0.0.1", 1, 2),)))
    assert runs == {here + "\n"}


# -- JSON ----------------------------------------------------------------------------------------

def test_json_round_trips_every_field_canonically() -> None:
    spec = stack(FULL, svc("backend"))
    data = to_json(spec)
    assert from_json(data) == spec
    assert to_json(from_json(data)) == data
    assert json.loads(data)["version"] == 1
    assert data == canonical_json(json.loads(data))  # sorted keys, no insignificant whitespace
    assert "ünï".encode() in data  # UTF-8, not escapes


@pytest.mark.parametrize("mangle", [
    lambda d: b"{not json",
    lambda d: b"\xff",
    lambda d: json.dumps({**json.loads(d), "version": 2}).encode(),
    lambda d: json.dumps({**json.loads(d), "extra": 1}).encode(),
    lambda d: json.dumps([1]).encode(),
    lambda d: d.replace(b'"restart":"unless-stopped"', b'"restart":"sometimes"'),
    lambda d: d.replace(b'"host_port":18080', b'"host_port":"18080"'),
    lambda d: d.replace(b'"outbound":true', b'"outbound":1'),
    lambda d: d.replace(b'"retries":30', b'"retries":true'),
    lambda d: d.replace(b'["BACKEND_URL","http://backend:8080/"]', b'["BACKEND_URL"]'),
    lambda d: d.replace(b'"user":"1000:1000",', b""),
    lambda d: d.replace(b'"kind":"volume"', b'"kind":"tmpfs"'),
])
def test_malformed_json_is_a_stack_error(mangle: object) -> None:
    data = to_json(stack(FULL))
    bad = mangle(data)  # type: ignore[operator]
    assert bad != data
    with pytest.raises(StackError):
        from_json(bad)


# -- durations, ports, volumes, env files -------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), ("10us", 1e-5),
    ("2h1m1s", 7261.0), ("0s", 0.0), (".5s", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1x", "s", "1s2", "-1s", "1 s", "1S", 5, None, "1m30"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(FieldError, match="is not a duration"):
        parse_duration(text, path=("healthcheck", "interval"))


@pytest.mark.parametrize(("text", "port"), [
    ("18080:8080", PortSpec("127.0.0.1", 18080, 8080)),
    ("0.0.0.0:80:8080", PortSpec("0.0.0.0", 80, 8080)),
    ("127.0.0.1:53:5353/udp", PortSpec("127.0.0.1", 53, 5353, "udp")),
    ("[::1]:8443:443/tcp", PortSpec("::1", 8443, 443)),
    ({"target": 80, "published": 8080}, PortSpec("127.0.0.1", 8080, 80)),
    ({"target": 80, "published": "8080", "host_ip": "0.0.0.0", "protocol": "udp"}, PortSpec("0.0.0.0", 8080, 80, "udp")),
])
def test_ports(text: object, port: PortSpec) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize(("text", "says"), [
    ("8080", "names no host port"), (8080, "names no host port"), (8.5, "is not valid"), ("0:80", "'0' is not a port number"),
    ("80:65536", "'65536' is not a port number"), ("a:80", "'a' is not a port number"),
    ("8000-8010:8000-8010", "is not a port number"), ("localhost:80:80", "'localhost' is not an IP address"),
    ("80:80/sctp", "neither tcp nor udp"), ("1:2:3:4", "is not valid"), ("[::1:80:80", "is not valid"),
    ({"target": 80}, "needs target and published"), ({"target": 80, "published": 1, "mode": "host"}, "unknown port key"),
    ({"target": True, "published": 1}, "is not a port number"),
])
def test_bad_ports(text: object, says: str) -> None:
    with pytest.raises(FieldError, match=says) as caught:
        parse_port(text)
    assert caught.value.path == ("ports",) and caught.value.hint


@pytest.mark.parametrize(("text", "volume"), [
    ("./static:/srv/static:ro", VolumeSpec("bind", "app/static", "/srv/static", True)),
    ("./static:/srv/static:rw", VolumeSpec("bind", "app/static", "/srv/static", False)),
    ("../shared/data:/data", VolumeSpec("bind", "shared/data", "/data")),
    (".:/src/", VolumeSpec("bind", "app", "/src")),
    ("cache:/var/cache/app", VolumeSpec("volume", "cache", "/var/cache/app")),
])
def test_volumes(text: str, volume: VolumeSpec) -> None:
    assert parse_volume(text, base="app", allow_absolute=False) == volume


@pytest.mark.parametrize(("text", "says"), [
    ("../../etc:/etc2", "leads outside the workspace"), ("/etc:/etc2", "is absolute"), ("/data", "is not SOURCE:TARGET"),
    ("./x:relative", "must be an absolute path"), ("./x:/", "must be an absolute path"), ("./x:/a/../b", "must be an absolute path"),
    ("./x:/y:z", "neither ro nor rw"), ("~/x:/y", "'~' is not expanded"), ("-bad:/y", "a volume name is"),
    (["./x", "/y"], "is not a string"), ("a:b:c:d", "is not SOURCE:TARGET"),
])
def test_bad_volumes(text: object, says: str) -> None:
    with pytest.raises(FieldError, match=says):
        parse_volume(text, base="app", allow_absolute=False)


def test_absolute_binds_only_where_allowed() -> None:
    assert parse_volume("/srv/data/:/data", base="", allow_absolute=True) == VolumeSpec("bind", "/srv/data", "/data")
    with pytest.raises(FieldError, match="leads outside the Compose file's folder"):
        parse_volume("../x:/x", base="", allow_absolute=True)


def test_env_file_lines() -> None:
    text = ("# a comment\n\nPLAIN=value  # trailing comment\nexport EXPORTED=yes\nSINGLE='kept # as $written'\n"
            'DOUBLE="line\\nbreak \\"quoted\\""\nEMPTY=\n  SPACED = padded  \nHASH=a#b\n')
    assert parse_env_lines(text) == [
        ("PLAIN", "value"), ("EXPORTED", "yes"), ("SINGLE", "kept # as $written"),
        ("DOUBLE", 'line\nbreak "quoted"'), ("EMPTY", ""), ("SPACED", "padded"), ("HASH", "a#b")]
    with pytest.raises(FieldError, match="app.env, line 2: expected NAME=VALUE"):
        parse_env_lines("A=1\nnot a line\n", where="app.env")


# -- a whole service ----------------------------------------------------------------------------

def parse(raw: dict[str, object], files: dict[str, str] | None = None) -> ServiceSpec:
    def read(rel: str) -> str:
        if files is None or rel not in files:
            raise FieldError(f"no {rel}", path=("env_file",))
        return files[rel]
    return parse_service("svc", raw, image="oci:x", base="app", allow_absolute_binds=False, read_env_file=read)


def test_a_service_with_every_key() -> None:
    service = parse({
        "image": "ignored: the caller decides", "command": "serve --name 'a b'", "entrypoint": ["/bin/app"],
        "env_file": ["base.env", "../shared/more.env"], "environment": {"PORT": 8080, "FROM_FILE": "overridden"},
        "ports": ["18080:8080"], "volumes": ["./static:/srv:ro"], "depends_on": {"db": {"condition": "service_healthy"}},
        "healthcheck": {"test": "curl -f localhost", "interval": "1s", "retries": 30}, "restart": "on-failure",
        "working_dir": "/srv", "user": 1000, "outbound": True,
    }, {"app/base.env": "FROM_FILE=file\nONLY_FILE=1\n", "shared/more.env": "MORE=2\n"})
    assert service.command == ("serve", "--name", "a b") and service.entrypoint == ("/bin/app",)
    assert service.environment == (("FROM_FILE", "overridden"), ("MORE", "2"), ("ONLY_FILE", "1"), ("PORT", "8080"))
    assert service.depends_on == (Dependency("db", "service_healthy"),)
    assert service.healthcheck == Healthcheck(("/bin/sh", "-c", "curl -f localhost"), 1.0, 30.0, 30, 0.0)
    assert (service.restart, service.working_dir, service.user, service.outbound) == ("on-failure", "/srv", "1000", True)


@pytest.mark.parametrize(("test", "argv"), [
    (["CMD", "/bin/true", "x"], ("/bin/true", "x")), (["CMD-SHELL", "exit 0"], ("/bin/sh", "-c", "exit 0")),
    (["/usr/bin/python3", "-c", "..."], ("/usr/bin/python3", "-c", "...")),
])
def test_healthcheck_test_forms(test: list[str], argv: tuple[str, ...]) -> None:
    health = parse({"healthcheck": {"test": test}}).healthcheck
    assert health is not None and health.test == argv
    assert (health.interval_s, health.timeout_s, health.retries, health.start_period_s) == (30.0, 30.0, 3, 0.0)


def test_a_disabled_healthcheck_is_none() -> None:
    assert parse({"healthcheck": {"test": ["NONE"]}}).healthcheck is None
    assert parse({"healthcheck": {"test": ["CMD", "x"], "disable": True}}).healthcheck is None
    assert parse({"depends_on": ["a", "b"]}).depends_on == (Dependency("a"), Dependency("b"))
    assert parse({"environment": ["A=1", "B=x=y"]}).environment == (("A", "1"), ("B", "x=y"))


@pytest.mark.parametrize(("raw", "path", "says"), [
    ({"hostname": "x"}, ("hostname",), "unknown key 'hostname'"),
    ({"restart": "sometimes"}, ("restart",), "unknown restart policy 'sometimes'"),
    ({"restart": False}, ("restart",), "unknown restart policy False"),
    ({"command": 5}, ("command",), "must be a string or a list of strings"),
    ({"command": "unclosed 'quote"}, ("command",), "cannot be split"),
    ({"environment": {"A": True}}, ("environment",), "is not a string or number"),
    ({"environment": {"A": None}}, ("environment",), "is not a string or number"),
    ({"environment": ["A"]}, ("environment",), "is not NAME=VALUE"),
    ({"environment": {"1A": "x"}}, ("environment",), "is not a variable name"),
    ({"environment": "A=1"}, ("environment",), "must be a table or a list"),
    ({"env_file": "/etc/passwd"}, ("env_file",), "must be a file inside the package"),
    ({"env_file": "../../x.env"}, ("env_file",), "must be a file inside the package"),
    ({"env_file": "missing.env"}, ("env_file",), "no app/missing.env"),
    ({"ports": "80:80"}, ("ports",), "must be a list"),
    ({"volumes": ["a:/data", "./b:/data/"]}, ("volumes",), "two volumes are mounted at /data"),
    ({"depends_on": {"db": {"condition": "service_ready"}}}, ("depends_on", "db"), "unknown condition"),
    ({"depends_on": {"db": {"required": True}}}, ("depends_on", "db"), "unknown key 'required'"),
    ({"depends_on": {"db": "service_healthy"}}, ("depends_on", "db"), "expected a table"),
    ({"depends_on": ["db", "db"]}, ("depends_on",), "names a service twice"),
    ({"depends_on": "db"}, ("depends_on",), "must be a list or a table"),
    ({"healthcheck": {"test": ["CMD"]}}, ("healthcheck", "test"), "names no program"),
    ({"healthcheck": {"test": ["CMD-SHELL", "a", "b"]}}, ("healthcheck", "test"), "takes one command"),
    ({"healthcheck": {"test": 5}}, ("healthcheck", "test"), "must be a string or a list"),
    ({"healthcheck": {"test": "x", "interval": "0s"}}, ("healthcheck", "interval"), "longer than 0s"),
    ({"healthcheck": {"test": "x", "timeout": 5}}, ("healthcheck", "timeout"), "is not a duration"),
    ({"healthcheck": {"test": "x", "retries": 0}}, ("healthcheck", "retries"), "at least 1"),
    ({"healthcheck": {"test": "x", "start_interval": "1s"}}, ("healthcheck", "start_interval"), "unknown key"),
    ({"healthcheck": "x"}, ("healthcheck",), "must be a table"),
    ({"working_dir": "srv"}, ("working_dir",), "is not an absolute path"),
    ({"user": ""}, ("user",), "non-empty string"),
    ({"outbound": "yes"}, ("outbound",), "true or false"),
])
def test_bad_service_keys_name_their_path(raw: dict[str, object], path: tuple[str, ...], says: str) -> None:
    with pytest.raises(FieldError, match=says) as caught:
        parse(raw)
    assert caught.value.path == path
    assert caught.value.exit_code == EXIT_BAD_INPUT


def test_unknown_keys_list_the_supported_ones() -> None:
    with pytest.raises(FieldError) as caught:
        parse({"container_name": "x"})
    assert caught.value.hint and "depends_on" in caught.value.hint and "healthcheck" in caught.value.hint


# -- images and resolving ------------------------------------------------------------------------

def test_image_kinds() -> None:
    assert image_kind("oci:pbuild-out/a/oci") == ("oci", "pbuild-out/a/oci")
    assert image_kind("docker-archive:/x.tar") == ("docker-archive", "/x.tar")
    assert image_kind("pbuild://app:image") == ("label", "//app:image")
    assert image_kind("docker://nginx:1.25") == ("registry", "nginx:1.25")
    with pytest.raises(StackError):
        image_kind("nginx")


def test_resolve_makes_paths_absolute_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "app" / "static").mkdir(parents=True)
    spec = stack(svc("a", volumes=(VolumeSpec("bind", "app/static", "/s"), VolumeSpec("volume", "cache", "/c"),
                                   VolumeSpec("bind", "/abs/path", "/p"))),
                 dataclasses.replace(svc("b"), image="docker-archive:pbuild-out/b.tar"))
    resolved = resolve(spec, str(tmp_path))
    root = os.path.realpath(tmp_path)
    a, b = resolved.services
    assert a.image == f"oci:{root}/pbuild-out/app/a/oci" and b.image == f"docker-archive:{root}/pbuild-out/b.tar"
    assert [v.source for v in a.volumes] == [f"{root}/app/static", "cache", "/abs/path"]
    assert resolve(resolved, "/elsewhere") == resolved  # absolute paths stay


def test_resolve_refuses_a_symbolic_link_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "ws" / "app").mkdir(parents=True)
    (tmp_path / "ws" / "app" / "static").symlink_to(tmp_path)
    spec = stack(svc("a", volumes=(VolumeSpec("bind", "app/static", "/s"),)))
    with pytest.raises(StackError, match="'app/static' leads outside") as caught:
        resolve(spec, str(tmp_path / "ws"))
    assert caught.value.exit_code == EXIT_BAD_INPUT


def test_labels_and_references_are_built_before_they_resolve(tmp_path: Path) -> None:
    spec = stack(dataclasses.replace(svc("a"), image="pbuild://app:image"), svc("b"))
    with pytest.raises(StackError, match="not built or pulled yet"):
        resolve(spec, str(tmp_path))
    built = replace_image(spec, "a", "oci:pbuild-out/app/image/oci", "sha256:" + "c" * 64)
    assert built.service("a").image_digest == "sha256:" + "c" * 64 and built.service("b") == spec.service("b")
    assert resolve(built, str(tmp_path)).service("a").image.startswith("oci:/")
    with pytest.raises(KeyError):
        replace_image(spec, "nosuch", "oci:x", "")
