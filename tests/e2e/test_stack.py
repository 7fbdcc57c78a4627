"""Stacks end to end: the supervisor, real containers of a busybox image on a real stack network,
as root and as uid 65534. The driver calls ``pbuild.tools.stack.client`` as ``pbuild up``/
``down``/``ps``/``logs`` do after they resolved a spec (the CLI and Compose forms are in
test_stack_cli.py)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pbuild.tools.stack.spec import (
    Dependency,
    Healthcheck,
    PortSpec,
    ServiceSpec,
    StackSpec,
    VolumeSpec,
    to_json,
)

from tests.support.launcher import launch
from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.stacks import driver, driver_popen, kill_stacks, record_of, serving, stack_pids
from tests.support.testimages import make_busybox_image


@pytest.fixture(params=USERS)
def user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    """The test as root, then as uid 65534; whatever a stack left is killed afterwards."""
    with user_folder(request.param) as user:
        make_busybox_image(user.base / "layout")
        user.give(user.base)
        try:
            yield user
        finally:
            kill_stacks(user.base / "run")


def runtime(user: LauncherUser) -> Path:
    return user.base / "run"


def image(user: LauncherUser) -> str:
    return f"oci:{user.base / 'layout'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_spec(user: LauncherUser, spec: StackSpec, name: str = "spec.json") -> str:
    path = user.base / name
    path.write_bytes(to_json(spec))
    user.give(path)
    return str(path)


def up(user: LauncherUser, spec: StackSpec, *flags: str) -> tuple[int, str]:
    result = driver(user, "up", write_spec(user, spec), "-d", *flags)
    return result.returncode, result.stdout + result.stderr


def up_ok(user: LauncherUser, spec: StackSpec) -> str:
    code, out = up(user, spec)
    assert code == 0, out
    return out


def down_ok(user: LauncherUser, name: str, *flags: str) -> str:
    result = driver(user, "down", name, "2", *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def exec_in(user: LauncherUser, container: str, *argv: str) -> str:
    result = launch(user.env, "exec", container, *argv, prefix=tuple(user.prefix()))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def containers(user: LauncherUser, name: str) -> dict[str, dict]:
    return {s["name"]: s for s in record_of(runtime(user), name)["services"]}


def assert_all_gone(user: LauncherUser) -> None:
    """``down`` left no process, no container and no record."""
    run = runtime(user)
    assert stack_pids(run) == []
    assert list(run.glob("containers/*")) == []
    assert list(run.glob("stacks/*")) == []


def web(user: LauncherUser, port: int) -> StackSpec:
    """Two services on one port (8080) each; frontend published on the host's ``port``."""
    return StackSpec("web", "test:web", (
        ServiceSpec("backend", image(user), "sha256:b", command=serving("backend-says-hi")),
        ServiceSpec("frontend", image(user), "sha256:f", command=serving("frontend-page"),
                    ports=(PortSpec("127.0.0.1", port, 8080),), depends_on=(Dependency("backend"),)),
    ))  # fmt: skip


def http_get(port: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return data.decode(errors="replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_services_reach_each_other_by_name_on_one_port(user: LauncherUser) -> None:
    port = free_port()
    up_ok(user, web(user, port))
    # Both listen on 8080, each in its own network namespace; names resolve in every container.
    assert exec_in(user, "web-frontend-1", "wget", "-qO-", "http://backend:8080/").strip() == "backend-says-hi"
    assert exec_in(user, "web-backend-1", "wget", "-qO-", "http://web-frontend-1:8080/").strip() == "frontend-page"
    assert "frontend-page" in http_get(port)  # published on the host's loopback
    ps = driver(user, "ps", "web").stdout.splitlines()
    assert ps[0].split() == ["NAME", "SERVICE", "STATE", "HEALTH", "PORTS"]
    rows = {line.split()[0]: line.split()[1:] for line in ps[1:]}
    assert rows["web-backend-1"] == ["backend", "running"]
    assert rows["web-frontend-1"] == ["frontend", "running", f"127.0.0.1:{port}->8080/tcp"]
    down_ok(user, "web")
    assert_all_gone(user)
    with pytest.raises(OSError):
        http_get(port, timeout=0)


def test_up_again_recreates_only_the_changed_service(user: LauncherUser) -> None:
    spec = web(user, free_port())
    up_ok(user, spec)
    before = containers(user, "web")
    out = up_ok(user, spec)  # nothing changed: nothing recreated
    assert containers(user, "web") == before, out
    backend = replace(spec.services[0], environment=(("MODE", "two"),))
    out = up_ok(user, replace(spec, services=(backend, spec.services[1])))
    after = containers(user, "web")
    assert after["backend"]["container_id"] != before["backend"]["container_id"], out
    assert after["frontend"] == before["frontend"]  # same container, same process
    assert "Container web-backend-1  Recreate" in out
    assert exec_in(user, "web-backend-1", "sh", "-c", "echo $MODE").strip() == "two"
    assert exec_in(user, "web-frontend-1", "wget", "-qO-", "http://backend:8080/").strip() == "backend-says-hi"
    down_ok(user, "web")
    assert_all_gone(user)


def test_a_service_added_later_resolves_in_the_running_ones(user: LauncherUser) -> None:
    spec = web(user, free_port())
    up_ok(user, replace(spec, services=spec.services[:1]))
    backend = containers(user, "web")["backend"]
    up_ok(user, spec)  # frontend joins
    assert containers(user, "web")["backend"] == backend  # untouched, yet it knows the newcomer:
    assert exec_in(user, "web-backend-1", "wget", "-qO-", "http://frontend:8080/").strip() == "frontend-page"
    up_ok(user, replace(spec, services=spec.services[:1]))  # and forgets it when it goes
    assert "frontend" not in exec_in(user, "web-backend-1", "cat", "/etc/hosts")
    down_ok(user, "web")
    assert_all_gone(user)


def test_a_service_dropped_from_the_stack_is_removed_by_up(user: LauncherUser) -> None:
    spec = web(user, free_port())
    up_ok(user, spec)
    backend_id = containers(user, "web")["backend"]["container_id"]
    out = up_ok(user, replace(spec, services=spec.services[:1]))
    assert "Container web-frontend-1  Removed (no longer in the stack)" in out
    assert list(containers(user, "web")) == ["backend"]
    assert containers(user, "web")["backend"]["container_id"] == backend_id
    assert len(list(runtime(user).glob("containers/*"))) == 1
    down_ok(user, "web")
    assert_all_gone(user)


def wait_for(predicate, timeout: float = 20, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_restart_policies(user: LauncherUser) -> None:
    fails = ("sh", "-c", "echo started; sleep 0.3; exit 3")
    spec = StackSpec("rs", "test:rs", (
        ServiceSpec("flaky", image(user), "sha256:a", command=fails, restart="on-failure"),
        ServiceSpec("done", image(user), "sha256:a", command=("sh", "-c", "echo ok; exit 0"), restart="on-failure"),
        # (it ends after up returned: a service of policy no that fails during up fails the up)
        ServiceSpec("once", image(user), "sha256:a", command=("sh", "-c", "sleep 1; exit 3"), restart="no"),
    ))  # fmt: skip
    up_ok(user, spec)
    wait_for(lambda: containers(user, "rs")["flaky"]["restarts"] >= 2, what="two restarts of flaky")
    wait_for(lambda: "restarting" in driver(user, "ps", "rs").stdout, what="ps to show flaky restarting")
    wait_for(lambda: containers(user, "rs")["once"]["status"] == "exited", what="once to exit")
    services = containers(user, "rs")
    assert services["once"]["restarts"] == 0 and services["once"]["exit_code"] == 3
    assert services["done"]["restarts"] == 0 and services["done"]["exit_code"] == 0  # on-failure, and it succeeded
    logs = driver(user, "logs", "rs", "flaky").stdout
    assert logs.count("flaky | started") >= 3
    down_ok(user, "rs")
    assert_all_gone(user)


def test_a_service_restarts_while_up_waits_for_another(user: LauncherUser) -> None:
    # api fails its first start (as a service whose database is not up yet would) and comes
    # back by its restart policy while up waits for web, whose healthcheck needs api.
    first_fails = ("sh", "-c", "test -e /data/tried || { touch /data/tried; exit 1; }; " + serving("api")[2])
    api = ServiceSpec("api", image(user), "sha256:a", command=first_fails, restart="on-failure",
                      volumes=(VolumeSpec("volume", "data", "/data"),))  # fmt: skip
    web_service = ServiceSpec("web", image(user), "sha256:w", command=serving("w"),
                              healthcheck=Healthcheck(("wget", "-qO-", "http://api:8080/"), interval_s=0.2, retries=100),
                              depends_on=(Dependency("api"),))  # fmt: skip
    up_ok(user, StackSpec("rw", "test:rw", (api, web_service)))
    services = containers(user, "rw")
    assert services["api"]["restarts"] == 1 and services["web"]["health"] == "healthy"
    down_ok(user, "rw", "-v")
    assert_all_gone(user)


def healthy_when_file(path: str) -> Healthcheck:
    return Healthcheck(("test", "-e", path), interval_s=0.1, timeout_s=5, retries=100)


def test_service_healthy_orders_the_start(user: LauncherUser) -> None:
    # The backend turns healthy 1 s after it started; the frontend fetches from it first thing
    # and fails if it is not there yet.
    backend = ServiceSpec("backend", image(user), "sha256:b",
                          command=serving("ready-data", then="sleep 1; touch /tmp/ready; "),
                          healthcheck=healthy_when_file("/tmp/ready"))  # fmt: skip
    frontend = ServiceSpec("frontend", image(user), "sha256:f",
                           command=("sh", "-c", "wget -qO- http://backend:8080/ || exit 9; exec sleep 1000"),
                           depends_on=(Dependency("backend", "service_healthy"),))  # fmt: skip
    out = up_ok(user, StackSpec("hc", "test:hc", (frontend, backend)))
    assert out.index("hc-backend-1  Healthy") < out.index("hc-frontend-1  Starting")
    assert "frontend | ready-data" in driver(user, "logs", "hc").stdout
    rows = {line.split()[0]: line.split()[1:] for line in driver(user, "ps", "hc").stdout.splitlines()[1:]}
    assert rows["hc-backend-1"] == ["backend", "running", "healthy"]
    assert rows["hc-frontend-1"] == ["frontend", "running"]
    down_ok(user, "hc")
    assert_all_gone(user)


def test_never_healthy_fails_up_and_stops_what_it_started(user: LauncherUser) -> None:
    backend = ServiceSpec("backend", image(user), "sha256:b", command=serving("x"),
                          healthcheck=Healthcheck(("sh", "-c", "echo not yet; exit 1"), interval_s=0.1, retries=3))  # fmt: skip
    frontend = ServiceSpec("frontend", image(user), "sha256:f", command=serving("y"),
                           depends_on=(Dependency("backend", "service_healthy"),))  # fmt: skip
    code, out = up(user, StackSpec("nh", "test:nh", (backend, frontend)))
    assert code == 1, out
    assert "service backend did not become healthy" in out and "not yet" in out
    assert "so frontend (depends_on: service_healthy) was not started" in out
    assert_all_gone(user)


def test_a_service_that_exits_during_up_is_named(user: LauncherUser) -> None:
    crash = ServiceSpec("db", image(user), "sha256:d", command=("sh", "-c", "echo boom >&2; exit 3"),
                        healthcheck=healthy_when_file("/never"))  # fmt: skip
    other = ServiceSpec("cache", image(user), "sha256:c", command=serving("c"))
    code, out = up(user, StackSpec("ex", "test:ex", (other, crash)))
    assert code == 1, out
    assert "service db exited with code 3 before it was healthy" in out
    assert_all_gone(user)


def test_named_volume_persists_until_down_v_and_binds_can_be_read_only(user: LauncherUser) -> None:
    shared = user.base / "shared"
    shared.mkdir()
    (shared / "greeting").write_text("hello from the host\n")
    user.give(shared)
    script = ("echo run >> /data/runs; cat /host/greeting; touch /host/x 2>/dev/null && echo writable || echo read-only; "
              "trap 'exit 0' TERM; sleep 1000 & wait")  # fmt: skip
    spec = StackSpec("vol", "test:vol", (ServiceSpec(
        "app", image(user), "sha256:a", command=("sh", "-c", script),
        volumes=(VolumeSpec("volume", "data", "/data"), VolumeSpec("bind", str(shared), "/host", read_only=True))),))  # fmt: skip
    up_ok(user, spec)
    wait_for(lambda: "read-only" in driver(user, "logs", "vol").stdout, what="the service's output")
    logs = driver(user, "logs", "vol").stdout
    assert "app | hello from the host" in logs and "app | read-only" in logs
    assert not (shared / "x").exists()
    down_ok(user, "vol")
    volume = user.base / "volumes" / "vol_data"
    assert (volume / "runs").read_text() == "run\n"  # kept by down
    up_ok(user, spec)
    wait_for(lambda: (volume / "runs").read_text() == "run\nrun\n", what="the second run's line")
    out = down_ok(user, "vol", "-v")
    assert "Volume vol_data  Removed" in out
    assert not volume.exists()
    assert_all_gone(user)


def test_down_cleans_up_after_the_supervisor_was_killed(user: LauncherUser) -> None:
    up_ok(user, web(user, free_port()))
    supervisor = record_of(runtime(user), "web")["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: supervisor not in stack_pids(runtime(user)), what="the supervisor to die")
    assert len(stack_pids(runtime(user))) == 3  # the holder and two containers live on
    assert "supervisor of stack web is not running" in driver(user, "ps", "web").stdout
    down_ok(user, "web")
    assert_all_gone(user)


def test_up_after_the_supervisor_was_killed_starts_afresh(user: LauncherUser) -> None:
    spec = web(user, free_port())
    up_ok(user, spec)
    before = containers(user, "web")
    os.kill(record_of(runtime(user), "web")["supervisor_pid"], signal.SIGKILL)
    out = up_ok(user, spec)
    assert "The supervisor of stack web is gone; removing what it left" in out
    after = containers(user, "web")
    assert {s["container_id"] for s in after.values()}.isdisjoint(s["container_id"] for s in before.values())
    assert len(stack_pids(runtime(user))) == 4  # nothing of the old stack is left running
    assert exec_in(user, "web-frontend-1", "wget", "-qO-", "http://backend:8080/").strip() == "backend-says-hi"
    down_ok(user, "web")
    assert_all_gone(user)


def test_sigterm_to_the_supervisor_takes_the_stack_down(user: LauncherUser) -> None:
    up_ok(user, web(user, free_port()))
    os.kill(record_of(runtime(user), "web")["supervisor_pid"], signal.SIGTERM)
    wait_for(lambda: stack_pids(runtime(user)) == [], what="the stack to go")
    assert_all_gone(user)


def test_down_of_a_stack_that_is_not_up(user: LauncherUser) -> None:
    result = driver(user, "down", "nothing", "1")
    assert result.returncode == 0, result.stderr
    assert_all_gone(user)


def test_concurrent_up_makes_one_stack(user: LauncherUser) -> None:
    spec = web(user, free_port())
    path = write_spec(user, spec)
    first, second = driver_popen(user, "up", path, "-d"), driver_popen(user, "up", path, "-d")
    for proc in (first, second):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    record = record_of(runtime(user), "web")
    assert [s["status"] for s in record["services"]] == ["running", "running"]
    assert len(list(runtime(user).glob("containers/*"))) == 2
    assert len(stack_pids(runtime(user))) == 4  # one supervisor, one holder, two containers
    down_ok(user, "web")
    assert_all_gone(user)


def test_logs_interleave_by_time_with_the_service_as_prefix(user: LauncherUser) -> None:
    # The two services take turns through files on a shared volume, so the order in which
    # they write does not depend on how fast each container started.
    def turns(mine: list[tuple[str, str, str]]) -> tuple[str, ...]:
        steps = "; ".join(f"while [ ! -e /talk/{wait} ]; do sleep 0.05; done; sleep 0.2; echo {line}{redirect}; touch /talk/{line}"
                          for wait, line, redirect in mine)  # fmt: skip
        return ("sh", "-c", f"trap 'exit 0' TERM; {steps}; sleep 1000 & wait")

    talk = (VolumeSpec("volume", "talk", "/talk"),)
    spec = StackSpec("lg", "test:lg", (
        ServiceSpec("alpha", image(user), "sha256:a", volumes=talk,
                    command=turns([("b1", "a1", ""), ("b2", "a2", "")])),
        ServiceSpec("b", image(user), "sha256:a", volumes=talk,
                    command=("sh", "-c", "touch /talk/go; " + turns([("go", "b1", " >&2"), ("a1", "b2", "")])[2])),
    ))  # fmt: skip
    up_ok(user, spec)
    wait_for(lambda: "a2" in driver(user, "logs", "lg").stdout, what="the last line")
    lines = [line for line in driver(user, "logs", "lg").stdout.splitlines() if line.strip()]
    assert lines == ["b     | b1", "alpha | a1", "b     | b2", "alpha | a2"]  # b1 came on stderr
    assert driver(user, "logs", "lg", "b").stdout.splitlines() == ["b | b1", "b | b2"]
    bad = driver(user, "logs", "lg", "gamma")
    assert bad.returncode == 2 and "stack lg has no service gamma" in bad.stderr
    assert exec_in(user, "lg-alpha-1", "true") == ""
    raw = launch(user.env, "logs", "lg-alpha-1", prefix=tuple(user.prefix()))
    assert raw.stdout == "a1\na2\n"  # the launcher's own log of the container, as for run -d
    down_ok(user, "lg", "-v")


def test_a_second_origin_cannot_take_the_name(user: LauncherUser) -> None:
    up_ok(user, web(user, free_port()))
    code, out = up(user, replace(web(user, free_port()), origin="test:other"))
    assert code == 2, out
    assert "the stack name 'web' is used by test:web" in out and "project_name" in out
    down_ok(user, "web")


def test_a_published_port_in_use_names_the_service(user: LauncherUser) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = up(user, web(user, port))
    assert code == 1, out
    assert "service frontend" in out and str(port) in out
    assert_all_gone(user)


def test_up_without_detach_streams_logs_and_ctrl_c_stops(user: LauncherUser) -> None:
    spec = StackSpec("fg", "test:fg", (
        ServiceSpec("talk", image(user), "sha256:a", command=("sh", "-c", "trap 'exit 0' TERM; "
                    "while true; do echo tick; sleep 0.2; done & wait")),
    ))  # fmt: skip
    proc = driver_popen(user, "up", write_spec(user, spec))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "talk | tick\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Container fg-talk-1  Removed" in err
    assert_all_gone(user)


def waiting_forever(user: LauncherUser) -> StackSpec:
    never = Healthcheck(("false",), interval_s=0.1, retries=100000)
    return StackSpec("wt", "test:wt", (
        ServiceSpec("slow", image(user), "sha256:a", command=serving("s"), healthcheck=never),
    ))  # fmt: skip


def test_ctrl_c_while_up_waits_stops_what_it_started(user: LauncherUser) -> None:
    proc = driver_popen(user, "up", write_spec(user, waiting_forever(user)), "-d")
    assert proc.stderr is not None
    while "Waiting" not in proc.stderr.readline():
        pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    wait_for(lambda: stack_pids(runtime(user)) == [], what="the stack to go")
    assert_all_gone(user)


def test_down_calls_off_an_up_that_waits(user: LauncherUser) -> None:
    proc = driver_popen(user, "up", write_spec(user, waiting_forever(user)), "-d")
    assert proc.stderr is not None
    while "Waiting" not in proc.stderr.readline():
        pass
    down_ok(user, "wt")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "up was called off" in err, err
    assert_all_gone(user)


def test_logs_follow_until_the_stack_goes(user: LauncherUser) -> None:
    spec = StackSpec("lf", "test:lf", (
        ServiceSpec("talk", image(user), "sha256:a", command=("sh", "-c", "trap 'exit 0' TERM; "
                    "while true; do echo tick; sleep 0.2; done & wait")),
    ))  # fmt: skip
    up_ok(user, spec)
    follow = driver_popen(user, "logs-f", "lf")
    assert follow.stdout is not None
    assert follow.stdout.readline() == "talk | tick\n"
    assert follow.stdout.readline() == "talk | tick\n"  # one that came after it started
    down_ok(user, "lf")
    follow.communicate(timeout=30)  # ends with the stack
    assert follow.returncode == 0


def test_up_without_detach_returns_when_every_service_ended(user: LauncherUser) -> None:
    spec = StackSpec("job", "test:job", (
        ServiceSpec("once", image(user), "sha256:a", command=("sh", "-c", "sleep 0.3; echo did-the-job")),
    ))  # fmt: skip
    result = driver(user, "up", write_spec(user, spec), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "once | did-the-job\n"
    assert containers(user, "job")["once"]["exit_code"] == 0  # ended, kept until down (as Compose)
    down_ok(user, "job")
    assert_all_gone(user)


def test_a_check_past_its_timeout_fails(user: LauncherUser) -> None:
    hangs = Healthcheck(("sleep", "30"), interval_s=0.2, timeout_s=0.3, retries=2)
    spec = StackSpec("to", "test:to", (ServiceSpec("slow", image(user), "sha256:a", command=serving("x"),
                                                   healthcheck=hangs),))  # fmt: skip
    started = time.monotonic()
    code, out = up(user, spec)
    assert code == 1 and "service slow did not become healthy" in out and "timed out after 0.3s" in out, out
    assert time.monotonic() - started < 20
    assert_all_gone(user)


def test_down_kills_what_ignores_sigterm_after_the_timeout(user: LauncherUser) -> None:
    stubborn = ("sh", "-c", "trap '' TERM; sleep 1000 & wait")
    up_ok(user, StackSpec("st", "test:st", (ServiceSpec("mule", image(user), "sha256:a", command=stubborn),)))
    started = time.monotonic()
    down_ok(user, "st")  # -t 2
    took = time.monotonic() - started
    assert 2 <= took < 10, took
    assert_all_gone(user)
