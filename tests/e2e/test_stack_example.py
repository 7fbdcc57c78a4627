"""examples/stack, the lecture's Compose example: its three images build, each service answers when
run alone (as root and as uid 65534), and `pbuild up -d //examples/stack:web` brings the whole
stack up behind nginx on 127.0.0.1:18080 and `down` takes it away again.

The services alone: nginx's config passes `nginx -t` and nginx serves the bind volume and
proxies `/` and `/api/` to the names `frontend` and `backend` (which resolve, for the test, to
an address where nothing listens, so the proxy answers 502 and logs where it went); the backend
and the frontend share the host's network on free ports, so the frontend's page carries the
backend's answer; the backend's healthcheck is the stack target's own, run in the container.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.launcher import LAUNCHER, kill_leftovers
from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.paths import REPO
from tests.support.peers import free_port
from tests.support.runner import SETPRIV_NOBODY, Result, Runner

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "stack"
IMAGES = ("backend_image", "frontend_image", "nginx_image")
STACK_PORT = 18080  # the port the example publishes (BUILD.toml and compose.yaml)
PYTHON = ("/usr/bin/python3", "-c")  # the Python images have no shell utilities
_PARTS = ("WORKSPACE.toml", ".pbuildignore", "third_party", "examples/stack")


def clone_stack_workspace(dest: Path) -> Path:
    """The parts of this repository that examples/stack needs, in a fresh folder."""
    for part in _PARTS:
        src, target = REPO / part, dest / part
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("pbuild-out", "__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    (dest / "BUILD.toml").write_text("")  # the repository's root package builds pbuild itself
    return dest


@dataclass(frozen=True)
class Built:
    ws: Path
    runner: Runner

    def oci(self, image: str) -> Path:
        return self.ws / "pbuild-out/examples/stack" / image / "oci"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("stack")
    ws = clone_stack_workspace(tmp / "ws")
    runner = Runner(tmp)
    result = runner("build", "//examples/stack/...", cwd=ws, timeout=900)
    assert result.code == 0, result
    return Built(ws, runner)


@pytest.fixture(params=USERS)
def launcher_user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    """Run the test as root, then as uid 65534."""
    with user_folder(request.param) as user:
        yield user


def image_config(layout: Path) -> dict[str, object]:
    """The image config of the (only) manifest in an OCI layout."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config: dict[str, object] = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())["config"]
    return config


def http(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH: (status, body), or (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as err:
        return 0, str(err)


def wait_http(port: int, path: str, timeout: float = 30) -> tuple[int, str]:
    """The first answer on ``port`` (a service still starting refuses connections)."""
    deadline = time.monotonic() + timeout
    while True:
        got = http(port, path)
        if got[0] or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def listening(port: int) -> bool:
    """Does anything accept connections on the port, on 127.0.0.1 or ::1?"""
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as sock:
            sock.settimeout(1)
            if sock.connect_ex((address, port)) == 0:
                return True
    return False


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a launcher command that must succeed."""
    assert proc.returncode == 0, f"{proc.args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def cli_ok(result: Result) -> str:
    """The stdout of a pbuild command that must succeed."""
    assert result.code == 0, str(result)
    return result.out


def run_to_files(user: LauncherUser, *args: str) -> subprocess.CompletedProcess[str]:
    """A launcher command whose output goes to files of the user's own: nginx opens /dev/stdout
    for its access log, and a pipe made by root (as pytest's are) is not uid 65534's to open
    again, unlike the user's terminal or the pipes of the user's own stack supervisor."""
    out, err = user.base / "stdout", user.base / "stderr"
    for path in (out, err):
        path.write_text("")
    user.give(out, err)
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.run([*user.prefix(), *LAUNCHER, *args], env=user.env, cwd=user.base, stdout=stdout,
                              stderr=stderr, timeout=120, check=False)  # fmt: skip
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


def healthcheck_test() -> list[str]:
    """The backend's healthcheck command, as the stack target declares it."""
    with open(EXAMPLE / "BUILD.toml", "rb") as handle:
        build = tomllib.load(handle)
    test: list[str] = build["web"]["services"]["backend"]["healthcheck"]["test"]
    return test


def give_image(user: LauncherUser, built: Built, image: str) -> str:
    """A copy of one built image in the user's folder (pytest's temp root is root's alone)."""
    dest = user.base / image
    shutil.copytree(built.oci(image), dest)
    user.give(dest)
    return f"oci:{dest}"


# --- the images ---------------------------------------------------------------------------------


def test_the_images_build_with_their_configuration(built: Built) -> None:
    configs = {image: image_config(built.oci(image)) for image in IMAGES}
    for image, config in configs.items():
        assert config["ExposedPorts"] == {"8080/tcp": {}}, image
    assert "PORT=8080" in configs["backend_image"]["Env"]  # type: ignore[operator]
    assert "BACKEND_URL=http://backend:8080/" in configs["frontend_image"]["Env"]  # type: ignore[operator]
    assert configs["nginx_image"]["Entrypoint"] == ["/usr/sbin/nginx"]
    # built once: a second build of the same tree executes nothing
    again = built.runner("build", "//examples/stack/...", cwd=built.ws, timeout=300)
    assert again.code == 0 and " executed" not in again.summary, again


# --- each service alone -------------------------------------------------------------------------


def test_nginx_config_passes_and_nginx_serves_and_proxies(built: Built, launcher_user: LauncherUser) -> None:
    user = launcher_user
    image = give_image(user, built, "nginx_image")
    # `frontend` and `backend` must resolve for nginx to start; here they name an address with no
    # listener inside the container's own network namespace (nginx listens on IPv4 only).
    hosts = user.base / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 frontend backend\n")
    static = user.base / "static"
    shutil.copytree(EXAMPLE / "static", static)
    user.give(hosts, static)
    mounts = ("-v", f"{hosts}:/etc/hosts:ro", "-v", f"{static}:/srv/static:ro")

    checked = run_to_files(user, "run", "--rm", *mounts, image, "--", "-t")
    assert checked.returncode == 0, checked.stderr
    assert "nginx.conf test is successful" in checked.stderr
    unresolved = run_to_files(
        user, "run", "--rm", image, "--", "-t"
    )  # without the names nginx refuses to start
    assert unresolved.returncode == 1 and 'host not found in upstream "backend"' in unresolved.stderr

    held: contextlib.AbstractContextManager[None]
    if user.uid == 0:
        port = free_port()
        network, held = ("-p", f"127.0.0.1:{port}:8080"), contextlib.nullcontext()
    else:
        # -p needs /dev/net/tun, which may be root's alone (it is on this project's machines):
        # share the host's network, where nginx listens on its own port 8080.
        port, network, held = 8080, ("--network", "host"), port_lock(8080)
    with held:
        check_nginx(user, image, network, mounts, port)


def check_nginx(
    user: LauncherUser, image: str, network: tuple[str, ...], mounts: tuple[str, ...], port: int
) -> None:
    ok(user.launch("run", "-d", "--name", "nginx", *network, *mounts, image))
    try:
        assert wait_http(port, "/nginx-health") == (200, "ok\n")
        assert http(port, "/static/hello.txt") == (200, (EXAMPLE / "static/hello.txt").read_text())
        assert http(port, "/static/style.css")[0] == 200
        assert http(port, "/")[0] == 502
        assert http(port, "/api/hello")[0] == 502
        logs = ok(user.launch("logs", "nginx"))
        assert 'upstream: "http://[::1]:8080/", host:' in logs, logs  # / went to the frontend
        assert 'upstream: "http://[::1]:8080/api/hello"' in logs, logs  # /api/ to the backend
        assert '"GET /static/hello.txt HTTP/1.1" 200' in logs  # the access log reaches stdout
    finally:
        ok(user.launch("stop", "-t", "5", "nginx"))
        ok(user.launch("rm", "nginx"))
    assert not listening(port)


def test_backend_and_frontend_answer_and_reach_each_other(built: Built, launcher_user: LauncherUser) -> None:
    user = launcher_user
    backend_image = give_image(user, built, "backend_image")
    frontend_image = give_image(user, built, "frontend_image")
    backend_port, frontend_port = free_port(), free_port()
    ok(user.launch("run", "-d", "--name", "backend", "--network", "host", "-e", f"PORT={backend_port}",
                   "-e", "DATA_DIR=/tmp/data", backend_image))  # fmt: skip
    ok(user.launch("run", "-d", "--name", "frontend", "--network", "host", "-e", f"PORT={frontend_port}",
                   "-e", f"BACKEND_URL=http://127.0.0.1:{backend_port}/", frontend_image))  # fmt: skip
    try:
        assert wait_http(backend_port, "/healthz") == (200, "ok\n")
        first = json.loads(http(backend_port, "/api/hello")[1])
        assert first == {"message": "Hello from the backend", "hits": 1, "host": "backend"}
        assert json.loads(http(backend_port, "/api/hello")[1])["hits"] == 2  # kept in DATA_DIR
        assert http(backend_port, "/nowhere")[0] == 404
        assert ok(user.launch("exec", "backend", *PYTHON, "print(open('/tmp/data/hits').read())")) == "2\n"

        status, page = wait_http(frontend_port, "/")
        assert status == 200 and "<h1>Hello from the backend</h1>" in page and "hits: 3;" in page, page
        assert http(frontend_port, "/healthz") == (200, "ok\n")

        # the stack target's healthcheck, run in the backend container, passes while it serves
        test = healthcheck_test()
        assert test[-1].count("8080") == 1
        probe = [*test[:-1], test[-1].replace("8080", str(backend_port))]
        assert user.launch("exec", "backend", *probe).returncode == 0

        ok(user.launch("stop", "-t", "5", "backend"))
        status, page = http(frontend_port, "/")
        assert status == 502 and f"backend http://127.0.0.1:{backend_port}/ did not answer" in page
        assert "backend: listening on" in ok(user.launch("logs", "backend"))
        assert '"GET / HTTP/1.1" 200' in ok(user.launch("logs", "frontend"))
    finally:
        for name in ("backend", "frontend"):
            user.launch("rm", "-f", name)


def test_pbuild_run_publishes_a_service_with_its_environment(built: Built, tmp_path: Path) -> None:
    """The README's way to try one service: `./pbuild run -d -p ... -e ... IMAGE`."""
    runtime = tmp_path / "run"
    env = {"PBUILD_RUNTIME_DIR": str(runtime), "PBUILD_LAYER_STORE": str(tmp_path / "layers")}
    port = free_port()
    run = built.runner("run", "-d", "--name", "api", "-p", f"127.0.0.1:{port}:8080", "-e", "DATA_DIR=/tmp/elsewhere",
                       "//examples/stack:backend_image", cwd=built.ws, env=env)  # fmt: skip
    cli_ok(run)
    try:
        status, body = wait_http(port, "/api/hello")
        assert status == 200 and json.loads(body)["host"] == "api", body
        logs = cli_ok(built.runner("logs", "api", cwd=built.ws, env=env))
        assert "data in /tmp/elsewhere" in logs
        assert "api" in cli_ok(built.runner("ps", cwd=built.ws, env=env))
        assert cli_ok(built.runner("stop", "-t", "5", "api", cwd=built.ws, env=env)) == "api\n"
        assert not listening(port)
    finally:
        built.runner("rm", "-f", "api", cwd=built.ws, env=env)
        kill_leftovers(runtime)


# --- the whole stack ----------------------------------------------------------------------------


@contextlib.contextmanager
def port_lock(port: int) -> Iterator[None]:
    """One test at a time on a fixed port of the host's loopback (the example publishes 18080;
    xdist runs the root and nobody cases at once); skipped when something else holds it."""
    with open(Path(tempfile.gettempdir()) / f"pbuild-test-port-{port}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if listening(port):
                pytest.skip(f"127.0.0.1:{port} is taken by another program")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_stack_answers() -> None:
    """Through nginx on 127.0.0.1:18080: the frontend's page with the backend's answer, the API, the bind volume."""
    # `up -d` returns once the frontend is started (it has no healthcheck), which may be a moment
    # before it listens; nginx says 502 until then.
    deadline = time.monotonic() + 10
    while (got := wait_http(STACK_PORT, "/"))[0] == 502 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, page = got
    assert status == 200 and "<h1>Hello from the backend</h1>" in page, page
    status, body = http(STACK_PORT, "/api/hello")
    assert status == 200 and json.loads(body)["message"] == "Hello from the backend", body
    assert http(STACK_PORT, "/static/hello.txt") == (200, (EXAMPLE / "static/hello.txt").read_text())


def hits() -> int:
    return int(json.loads(http(STACK_PORT, "/api/hello")[1])["hits"])


@pytest.mark.parametrize("how", ["target", "compose"])
def test_up_brings_the_example_up_and_down_takes_it_away(
    built: Built, launcher_user: LauncherUser, how: str
) -> None:
    user = launcher_user
    ws = clone_stack_workspace(user.base / "ws")
    runner = Runner(user.base)
    # Built first as root: building the Debian Python layer runs pbuild's own interpreter, which
    # on this project's machines lies in a folder uid 65534 cannot search. `up` then finds every
    # image cached, as the user's own (the whole folder is given to them).
    prebuilt = runner("build", "//examples/stack/...", cwd=ws, cache=user.base / "cache", timeout=900)
    assert prebuilt.code == 0, prebuilt
    user.give(user.base)
    env = {"PBUILD_RUNTIME_DIR": user.env["PBUILD_RUNTIME_DIR"], "PBUILD_LAYER_STORE": str(user.store),
           "HOME": str(user.base)}  # fmt: skip
    prefix = SETPRIV_NOBODY if user.uid else ()
    which = ["//examples/stack:web"] if how == "target" else ["-f", "examples/stack/compose.yaml"]

    def pbuild(*args: str) -> Result:
        return runner(*args, cwd=ws, env=env, prefix=prefix, timeout=600, cache=user.base / "cache")

    def backend_start() -> str:
        """The backend's PID 1 start time: the same while its container is not recreated."""
        return (
            cli_ok(pbuild("exec", "web-backend-1", *PYTHON, "print(open('/proc/1/stat').read())"))
            .rsplit(")", 1)[1]
            .split()[19]
        )

    with port_lock(STACK_PORT):
        cli_ok(pbuild("up", "-d", *which))
        try:
            check_stack_answers()
            ps = cli_ok(pbuild("ps", *which))
            for service in ("backend", "frontend", "nginx"):
                assert f"web-{service}-1" in ps, ps
            assert "healthy" in ps and "18080" in ps, ps  # the backend's health; nginx's port
            # `logs` takes --file (its -f is --follow, as in Compose); each line says whose it is
            logs = pbuild("logs", *which) if how == "target" else pbuild("logs", "--file", which[1])
            lines = cli_ok(logs).splitlines()
            for service in ("backend", "frontend"):
                assert any(
                    line.startswith(service) and f"| {service}: listening on" in line for line in lines
                ), lines
            started, counted = backend_start(), hits()
            cli_ok(pbuild("up", "-d", *which))  # again, unchanged: nothing is recreated
            assert backend_start() == started
            assert hits() == counted + 1
        finally:
            down = pbuild("down", *which)
        assert down.code == 0, down
        assert not listening(STACK_PORT)
        left = cli_ok(pbuild("ps", "-a"))
        assert "web-" not in left, left
        # the named volume outlived `down`, so the count goes on; `down -v` removes it
        cli_ok(pbuild("up", "-d", *which))
        try:
            check_stack_answers()
            assert hits() > counted + 1
        finally:
            cli_ok(pbuild("down", "-v", *which))
        assert not listening(STACK_PORT)
