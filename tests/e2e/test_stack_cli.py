"""``pbuild up``/``down``/``ps``/``logs`` through the real CLI: a ``stack`` target of a fixture
workspace (its image built by pbuild from a busybox layer), the same stack as a Compose file
(``image:`` a label and an ``oci:`` layout), the launcher's own ``ps`` and ``logs NAME`` beside
them, and the commands' bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.runner import Result, Runner, WorkspaceFactory, assert_user_error
from tests.support.stacks import kill_stacks, stack_pids
from tests.support.testimages import BUSYBOX, make_busybox_image

# Each service first installs busybox's applets as links (the layer holds only the binary).
START = "/bin/busybox --install -s /bin; trap 'exit 0' TERM; "


def serve(text: str) -> str:
    return json.dumps(["/bin/busybox", "sh", "-c",
                       f"{START}mkdir -p /www; echo {text} > /www/index.html; httpd -f -p 8080 -h /www & wait"])  # fmt: skip


def build_toml(port: int, greeting: str = "hello") -> str:
    return f"""\
[busybox]
rule = "layer"
srcs = ["busybox"]
prefix = "/bin"

[tools]
rule = "image"
layers = [":busybox"]
cmd = ["/bin/busybox", "true"]

[web]
rule = "stack"

[web.services.backend]
image = ":tools"
command = {serve("backend-$GREETING")}
environment = {{ GREETING = "{greeting}" }}
healthcheck = {{ test = ["/bin/busybox", "wget", "-qO-", "http://127.0.0.1:8080/"], interval = "200ms", retries = 50 }}

[web.services.frontend]
image = ":tools"
command = ["/bin/busybox", "sh", "-c", "{START}cat /static/page; wget -qO- http://backend:8080/; sleep 1000 & wait"]
ports = ["127.0.0.1:{port}:8080"]
depends_on = {{ backend = {{ condition = "service_healthy" }} }}
volumes = ["./static:/static:ro", "cache:/cache"]
"""


COMPOSE = """\
services:
  api:
    image: "{image}"
    command: ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /www; env | grep ^ROLE= > /www/index.html; httpd -f -p 8080 -h /www & wait"]
    environment:
      ROLE: compose
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8080/"]
      interval: 200ms
      retries: 50
  web:
    image: "{image}"
    command: ["sh", "-c", "trap 'exit 0' TERM; wget -qO- http://api:8080/; sleep 1000 & wait"]
    depends_on:
      api:
        condition: service_healthy
    restart: on-failure
"""


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("runs as root (test_stack.py covers uid 65534)")
    runtime = tmp_path / "runtime"
    yield {"PBUILD_RUNTIME_DIR": str(runtime), "PBUILD_LAYER_STORE": str(tmp_path / "layers")}
    kill_stacks(runtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_workspace(workspace: WorkspaceFactory, port: int) -> Path:
    root = workspace({"app/BUILD.toml": build_toml(port), "app/static/page": "static-page\n"})
    shutil.copy(BUSYBOX, root / "app" / "busybox")
    return root


def rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}


def wait_for_log(pbuild: Runner, ws: Path, env: dict[str, str], *args: str, text: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        out = pbuild("logs", *args, cwd=ws, env=env).out
        if text in out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def test_up_ps_logs_down_of_a_stack_target(workspace: WorkspaceFactory, pbuild: Runner,
                                            stack_env: dict[str, str]) -> None:  # fmt: skip
    port = free_port()
    ws = stack_workspace(workspace, port)
    up = pbuild("up", "-d", "//app:web", cwd=ws, env=stack_env, timeout=300)
    assert up.code == 0, str(up)
    assert "Container web-backend-1  Healthy" in up.err
    ps = pbuild("ps", ":web", cwd=ws / "app", env=stack_env)  # a relative label, from the package
    assert ps.code == 0, str(ps)
    assert rows(ps.out)["web-backend-1"] == ["backend", "running", "healthy"]
    assert rows(ps.out)["web-frontend-1"] == ["frontend", "running", f"127.0.0.1:{port}->8080/tcp"]
    logs = wait_for_log(pbuild, ws, stack_env, "//app:web", text="backend-hello")
    assert "frontend | static-page" in logs and "frontend | backend-hello" in logs
    # The launcher's own commands see the stack's containers by their Compose names.
    plain = pbuild("ps", cwd=ws, env=stack_env)
    assert "web-backend-1" in plain.out and "CONTAINER ID" in plain.out
    assert pbuild("logs", "web-frontend-1", cwd=ws, env=stack_env).out.startswith("static-page\n")
    # An edit to one service's environment recreates that service only.
    before = json.loads((Path(stack_env["PBUILD_RUNTIME_DIR"]) / "stacks/web/stack.json").read_text())
    (ws / "app/BUILD.toml").write_text(build_toml(port, greeting="again"))
    again = pbuild("up", "-d", "//app:web", cwd=ws, env=stack_env, timeout=300)
    assert again.code == 0, str(again)
    after = json.loads((Path(stack_env["PBUILD_RUNTIME_DIR"]) / "stacks/web/stack.json").read_text())
    ids = {s["name"]: s["container_id"] for s in before["services"]}
    new_ids = {s["name"]: s["container_id"] for s in after["services"]}
    assert new_ids["frontend"] == ids["frontend"] and new_ids["backend"] != ids["backend"]
    down = pbuild("down", "-t", "1", "//app:web", cwd=ws, env=stack_env)
    assert down.code == 0, str(down)
    assert stack_pids(Path(stack_env["PBUILD_RUNTIME_DIR"])) == []
    assert not (Path(stack_env["PBUILD_RUNTIME_DIR"]) / "stacks/web").exists()
    assert (Path(stack_env["PBUILD_LAYER_STORE"]).parent / "volumes/web_cache").is_dir()  # kept without -v
    again = pbuild("down", "//app:web", cwd=ws, env=stack_env)
    assert again.code == 0 and "not running" in again.out, str(again)


def test_a_compose_file_with_a_label_and_a_layout(workspace: WorkspaceFactory, pbuild: Runner,
                                                  stack_env: dict[str, str]) -> None:  # fmt: skip
    ws = stack_workspace(workspace, free_port())
    make_busybox_image(ws / "deploy" / "layout")
    (ws / "deploy" / "compose.yaml").write_text(COMPOSE.format(image="oci:./layout"))
    up = pbuild("up", "-d", "-f", "deploy/compose.yaml", cwd=ws, env=stack_env, timeout=300)
    assert up.code == 0, str(up)
    ps = pbuild("ps", "-f", "deploy/compose.yaml", cwd=ws, env=stack_env)
    assert rows(ps.out)["deploy-api-1"] == ["api", "running", "healthy"], str(ps)  # named after its folder
    logs = wait_for_log(pbuild, ws, stack_env, "--file", "deploy/compose.yaml", "web", text="web | ROLE=compose")
    assert "web | ROLE=compose" in logs
    down = pbuild("down", "-v", "-f", "deploy/compose.yaml", cwd=ws, env=stack_env)
    assert down.code == 0, str(down)
    assert stack_pids(Path(stack_env["PBUILD_RUNTIME_DIR"])) == []
    # image: a label, relative to the Compose file's package; built before the stack starts.
    (ws / "app" / "compose.yaml").write_text(COMPOSE.format(image=":tools").replace(
        '["sh", "-c", "', '["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin; ').replace(
        '["CMD", "wget"', '["CMD", "/bin/busybox", "wget"'))  # fmt: skip
    up = pbuild("up", "-d", "-f", "compose.yaml", cwd=ws / "app", env=stack_env, timeout=300)
    assert up.code == 0, str(up)
    assert "web | ROLE=compose" in wait_for_log(pbuild, ws, stack_env, "--file", "app/compose.yaml", text="web | ROLE=compose")
    assert pbuild("down", "-f", "app/compose.yaml", cwd=ws, env=stack_env).code == 0


def test_a_compose_file_as_an_unprivileged_user(tmp_path: Path) -> None:
    from tests.support.launcher_users import user_folder

    with user_folder("nobody") as user:
        ws = user.base / "ws"
        make_busybox_image(ws / "deploy" / "layout")
        (ws / "WORKSPACE.toml").write_text('[workspace]\nname = "fixture"\n')
        (ws / "deploy" / "compose.yaml").write_text(COMPOSE.format(image="oci:./layout"))
        user.give(user.base)
        runner = Runner(user.base)
        env = {"PBUILD_RUNTIME_DIR": user.env["PBUILD_RUNTIME_DIR"], "PBUILD_LAYER_STORE": str(user.store),
               "HOME": str(user.base)}  # fmt: skip

        def pbuild(*args: str) -> Result:
            return runner(*args, cwd=ws, env=env, prefix=user.prefix(), cache=user.base / "cache", timeout=300)

        try:
            up = pbuild("up", "-d", "-f", "deploy/compose.yaml")
            assert up.code == 0, str(up)
            assert rows(pbuild("ps", "-f", "deploy/compose.yaml").out)["deploy-api-1"] == ["api", "running", "healthy"]
            deadline = time.monotonic() + 20
            while "web | ROLE=compose" not in (logs := pbuild("logs", "--file", "deploy/compose.yaml").out):
                assert time.monotonic() < deadline, logs
                time.sleep(0.1)
            assert pbuild("down", "-f", "deploy/compose.yaml").code == 0
            assert stack_pids(Path(user.env["PBUILD_RUNTIME_DIR"])) == []
        finally:
            kill_stacks(Path(user.env["PBUILD_RUNTIME_DIR"]))


def test_a_compose_file_with_a_registry_image(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path,
                                              stack_env: dict[str, str]) -> None:  # fmt: skip
    from pbuild.lib.oci.registry.push import push_layout

    from tests.support.peers import docker_registry

    ws = stack_workspace(workspace, free_port())
    layout = make_busybox_image(tmp_path / "layout")
    with docker_registry(tmp_path / "registry") as registry:
        pushed = push_layout(str(layout), f"{registry.host}/tools/busybox:1", plain_http=True,
                             state_dir=str(tmp_path / "push-state"))  # fmt: skip
        reference = f"{registry.host}/tools/busybox@{pushed.digest}"
        (ws / "compose.yaml").write_text(COMPOSE.format(image=reference))
        up = pbuild("up", "-d", "-f", "compose.yaml", cwd=ws, env=stack_env, timeout=300)
        assert up.code == 0, str(up)
    # pulled once into the cache, by digest: the registry is gone, and up needs it no more
    assert (pbuild.cache / "stack-images" / pushed.digest.replace(":", "-") / "index.json").is_file()
    assert "web | ROLE=compose" in wait_for_log(pbuild, ws, stack_env, "--file", "compose.yaml", text="web | ROLE=compose")
    assert pbuild("down", "-f", "compose.yaml", cwd=ws, env=stack_env).code == 0
    again = pbuild("up", "-d", "-f", "compose.yaml", cwd=ws, env=stack_env, timeout=300)
    assert again.code == 0, str(again)
    assert pbuild("down", "-f", "compose.yaml", cwd=ws, env=stack_env).code == 0
    assert stack_pids(Path(stack_env["PBUILD_RUNTIME_DIR"])) == []


def test_bad_input(workspace: WorkspaceFactory, pbuild: Runner, stack_env: dict[str, str]) -> None:
    ws = stack_workspace(workspace, free_port())
    assert_user_error(pbuild("up", cwd=ws, env=stack_env), 2, "pbuild up takes a stack TARGET or -f COMPOSE_FILE")
    assert_user_error(pbuild("up", "//app:web", "-f", "x.yaml", cwd=ws, env=stack_env), 2, "(one of them)")
    assert_user_error(pbuild("down", "-t", "-1", "//app:web", cwd=ws, env=stack_env), 2, "cannot be negative")
    assert_user_error(pbuild("up", "-d", "//app:tools", cwd=ws, env=stack_env, timeout=300), 2,
                      "//app:tools (a image) is not a stack")  # fmt: skip
    assert_user_error(pbuild("logs", "//app:web", cwd=ws, env=stack_env), 1, "stack //app:web is not running")
    (ws / "bad.yaml").write_text("services:\n  a:\n    image: oci:./x\n    depends_on: [b]\n  b:\n"
                                 "    image: oci:./x\n    depends_on: [a]\n")  # fmt: skip
    assert_user_error(pbuild("up", "-f", "bad.yaml", cwd=ws, env=stack_env), 2, "cycle", "a -> b -> a")
    (ws / "unknown.yaml").write_text("services:\n  a:\n    image: oci:./x\n    privileged: true\n")
    assert_user_error(pbuild("up", "-f", "unknown.yaml", cwd=ws, env=stack_env), 2, "unknown.yaml:4", "privileged")
    (ws / "tagged.yaml").write_text("services:\n  a:\n    image: 127.0.0.1:5000/app:1.0\n")
    assert_user_error(pbuild("up", "-d", "-f", "tagged.yaml", cwd=ws, env=stack_env), 2, "pinned by digest")
    assert stack_pids(Path(stack_env["PBUILD_RUNTIME_DIR"])) == []
