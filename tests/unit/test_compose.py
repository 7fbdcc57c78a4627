"""Compose files (pbuild.tools.stack.compose): a real compose.yaml read into a StackSpec, and
every input outside the subset refused with its file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pbuild.lib.errors import EXIT_BAD_INPUT
from pbuild.tools.stack.compose import load_compose
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.spec import Dependency, Healthcheck, PortSpec, VolumeSpec, resolve, start_order

COMPOSE = """\
# The lecture's three services.
name: lecture
x-common: &common
  restart: unless-stopped
  environment:
    LOG_LEVEL: info
services:
  backend:
    <<: *common
    image: "//examples/stack:backend_image"
    env_file: backend.env
    environment:
      PORT: 8080
    healthcheck:
      test: ["CMD", "/usr/bin/python3", "-c", "import urllib.request as u; u.urlopen('http://localhost:8080/')"]
      interval: 1s
      timeout: 500ms
      retries: 30
      start_period: 1m30s
  frontend:
    image: :frontend_image
    command: serve --port 8080
    ports:
      - 18080:8080
    environment:
      - BACKEND_URL=http://backend:8080/
    depends_on:
      backend:
        condition: service_healthy
    volumes:
      - ./static:/srv/static:ro
      - cache:/var/cache/app
    restart: no
    outbound: true
  proxy:
    image: docker.io/library/nginx:1.25
    ports: ["127.0.0.1:18443:443/tcp"]
    depends_on: [frontend]
    volumes:
      - /etc/ssl/certs:/etc/ssl/certs:ro
    x-note: ignored, as Compose ignores x- keys
volumes:
  cache:
"""


def write(tmp_path: Path, text: str, *, folder: str = "proj", files: dict[str, str] | None = None) -> Path:
    root = tmp_path / folder
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in (files or {}).items():
        (root / rel).write_text(content)
    path = root / "compose.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_compose_file_becomes_a_stack(tmp_path: Path) -> None:
    path = write(tmp_path, COMPOSE, files={"backend.env": "SECRET=from-file\nPORT=1\n"})
    spec = load_compose(str(path))
    assert spec.name == "lecture" and spec.origin == str(path)
    backend, frontend, proxy = spec.services
    assert backend.image == "pbuild://examples/stack:backend_image"
    assert backend.restart == "unless-stopped"  # from the merged x-common
    # A merge is shallow (YAML's <<): the service's own environment replaces the merged one; and
    # environment wins over the env_file's PORT=1.
    assert backend.environment == (("PORT", "8080"), ("SECRET", "from-file"))
    assert backend.healthcheck == Healthcheck(
        ("/usr/bin/python3", "-c", "import urllib.request as u; u.urlopen('http://localhost:8080/')"), 1.0, 0.5, 30, 90.0)
    assert frontend.image == "pbuild::frontend_image"
    assert frontend.command == ("serve", "--port", "8080")
    assert frontend.ports == (PortSpec("127.0.0.1", 18080, 8080),)  # 18080:8080 is text in YAML 1.2
    assert frontend.restart == "no"  # not YAML 1.1's false
    assert frontend.depends_on == (Dependency("backend", "service_healthy"),)
    assert frontend.volumes == (VolumeSpec("bind", "static", "/srv/static", True), VolumeSpec("volume", "cache", "/var/cache/app"))
    assert frontend.outbound is True
    assert proxy.image == "docker://docker.io/library/nginx:1.25"
    assert proxy.depends_on == (Dependency("frontend"),)
    assert start_order(spec) == [["backend"], ["frontend"], ["proxy"]]


def test_the_project_name_defaults_to_the_folder_name(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  a:\n    image: nginx\n", folder="My_Project.v2")
    assert load_compose(str(path)).name == "my_projectv2"
    path = write(tmp_path, "services:\n  a:\n    image: nginx\n", folder="...")
    with pytest.raises(StackError, match="cannot name the stack"):
        load_compose(str(path))


def test_binds_resolve_against_the_compose_files_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  a:\n    image: oci:images/a\n    volumes: ['./data:/data', '/srv:/srv']\n")
    (path.parent / "data").mkdir()
    spec = load_compose(str(path)).services[0]
    assert spec.image == "oci:images/a"
    resolved = resolve(load_compose(str(path)), str(path.parent)).services[0]
    assert resolved.image == f"oci:{path.parent.resolve()}/images/a"
    assert [v.source for v in resolved.volumes] == [f"{path.parent.resolve()}/data", "/srv"]


# Each bad input: the file, the line that must be named, and words of the message.
BAD = [
    ("services:\n  a:\n    image: nginx\n    build: .\n", 4, "build: is not supported"),
    ("services:\n  a:\n    image: nginx\n    container_name: x\n", 4, "unknown key 'container_name'"),
    ("services:\n  a:\n    image: nginx\nnetworks: {}\n", 4, "unknown key 'networks'"),
    ("services:\n  a:\n    image: nginx\n    ports:\n      - 80\n", 4, "names no host port"),
    ("services:\n  a:\n    image: nginx\n    ports: ['99999:80']\n", 4, "is not a port number"),
    ("services:\n  a:\n    image: nginx\n    healthcheck:\n      test: [CMD, x]\n      interval: 10\n", 6,
     "10 is not a duration"),
    ("services:\n  a:\n    image: nginx\n    restart: sometimes\n", 4, "unknown restart policy"),
    ("services:\n  a:\n    image: nginx\n    depends_on: [b]\n", 4, "depends on 'b', which the stack does not have"),
    ("services:\n  a:\n    image: nginx\n    depends_on: [b]\n  b:\n    image: nginx\n    depends_on:\n      a: {}\n",
     4, "a -> b -> a"),
    ("services:\n  a:\n    image: nginx\n    volumes: ['cache:/c']\n", 4, "which volumes: does not declare"),
    ("services:\n  a:\n    image: nginx\n    volumes: ['../up:/c']\n", 4, "leads outside the Compose file's folder"),
    ("services:\n  a:\n    image: nginx\n    env_file: missing.env\n", 4, "cannot read env file missing.env"),
    ("services:\n  a:\n    image: nginx\n    env_file: ../../etc/passwd\n", 4, "must be a file inside the package"),
    ("services:\n  a:\n    image: Nginx:latest\n", 3, "bad repository name"),
    ("services:\n  a:\n    image: '//pkg:a:b'\n", 3, "is not a pbuild label"),
    ("services:\n  a:\n    command: x\n", 2, "names no image"),
    ("services:\n  a: nginx\n", 2, "must be a mapping"),
    ("services:\n  a:\n    image: nginx\n  a:\n    image: nginx\n", 4, "key 'a' appears twice"),
    ("services:\n  a:\n    image: nginx\n    environment:\n      A:\n", 4, "is not a string or number"),
    ("services:\n  a:\n    image: nginx\n    healthcheck:\n      test: x\n      bogus: 1\n", 6, "unknown key 'bogus'"),
    ("services:\n  a:\n    image: nginx\n    healthcheck:\n      test: x\n      retries: 1.5\n", 6, "whole number"),
    ("name: Web\nservices:\n  a:\n    image: nginx\n", 1, "name 'Web' is not valid"),
    ("services: {}\n", 1, "at least one service"),
    ("- a\n- b\n", 1, "a mapping with services"),
    ("services:\n  a:\n    image: [nginx\n", 4, "invalid YAML"),
    ("services:\n  a:\n    image: !!python/object:os.system x\n", 3, "invalid YAML"),
    ("volumes:\n  cache:\n    driver: local\nservices:\n  a:\n    image: nginx\n", 2, "options are not supported"),
    ("services:\n  a:\n    image: nginx\n    ports: ['80:80']\n  b:\n    image: nginx\n    ports: ['80:80']\n", 1,
     "publishes 127.0.0.1:80/tcp"),
]


@pytest.mark.parametrize(("text", "line", "says"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_names_its_line(tmp_path: Path, text: str, line: int, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StackError) as caught:
        load_compose(str(path))
    assert caught.value.message.startswith(f"{path}:{line}: "), caught.value.message
    assert says in caught.value.message
    assert caught.value.exit_code == EXIT_BAD_INPUT


def test_unknown_keys_list_the_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  a:\n    image: nginx\n    hostname: x\n")
    with pytest.raises(StackError) as caught:
        load_compose(str(path))
    assert caught.value.hint is not None
    for key in ("command", "depends_on", "env_file", "healthcheck", "ports", "restart", "volumes", "working_dir"):
        assert key in caught.value.hint


def test_a_billion_laughs_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = write(tmp_path, "x-laughs:\n" + "".join(f"  {line}\n" for line in lines) + "services:\n  a:\n    image: nginx\n")
    with pytest.raises(StackError, match="expands to more than"):
        load_compose(str(path))


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="cannot read"):
        load_compose(str(tmp_path / "nosuch.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"services:\n  a:\n    image: \xff\n")
    with pytest.raises(StackError, match=r"bad.yaml:3: not UTF-8"):
        load_compose(str(bad))
