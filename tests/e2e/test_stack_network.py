"""A stack's network end to end: the holder (pbuild.tools.stack.network), containers of the built
//app:image joined to it with ``start_container`` (RunOptions.join), names in /etc/hosts,
published ports through pbuild's relay (pbuild.tools.launcher.forward), no outbound unless asked,
``pbuild exec`` into a joined container; as root and as uid 65534.

A driver script, run as the test's user, creates the network and starts the services detached,
then exits: the holder and the containers must outlive it, as they outlive a stack supervisor.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pbuild.tools.stack import network

from tests.support.imageclone import clone_app_workspace
from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.runner import Runner

pytestmark = pytest.mark.slow

# Each service: HTTP on 8080 answering its name; on 9000 a TCP peer that reads until EOF and
# answers with the length and digest of what it got (half-close through the relay); UDP echo on
# 9001. It says "ready NAME" once all three listen.
SERVER = r"""
import hashlib, http.server, os, socket, sys, threading
who = os.environ["WHO"]
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = who.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http_server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Hello)
tcp = socket.create_server(("0.0.0.0", 9000))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 9001))
def digest_peer():
    while True:
        conn, _ = tcp.accept()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        conn.close()
def echo():
    while True:
        data, peer = udp.recvfrom(65536)
        udp.sendto(who.encode() + b":" + data, peer)
threading.Thread(target=digest_peer, daemon=True).start()
threading.Thread(target=echo, daemon=True).start()
print("ready", who, flush=True)
http_server.serve_forever()
"""

# Run as the test's user: the network, then one detached container per service; prints JSON.
DRIVER = r"""
import json, os, sys, time
from pbuild.tools.launcher import process, run
from pbuild.tools.launcher.config import PortMapping, RunOptions
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.stack import network

image, stack_dir, services, server = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
net = network.create(stack_dir)
addresses = {}
for service in services:
    addresses[service["name"]] = network.allocate(net, list(addresses.values()))
hosts = network.hosts_entries("st", addresses)
null = os.open(os.devnull, os.O_RDWR)
log_path = os.path.join(stack_dir, "services.log")
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
out = {"network": net.__dict__, "userns": os.stat(f"/proc/{net.holder_pid}/ns/user").st_ino,
       "addresses": addresses, "containers": {}}
try:
    for service in services:
        name = service["name"]
        join = network.join_record(net, addresses[name], hosts, service.get("outbound", False))
        if service.get("stale"):
            join = join._replace(holder_start=join.holder_start + 1)
        options = RunOptions(
            image=image, entrypoint="/usr/bin/python3.11", command=("-c", server), env=(f"WHO={name}",),
            name=f"st-{name}-1", detach=True, join=join, labels=(("stack", "st"), ("service", name)),
            publish=tuple(PortMapping(p[0], p[1], p[2], "127.0.0.1") for p in service.get("publish", ())),
        )
        started = run.start_container(options, process.Stdio(null, log, log))
        out["containers"][name] = {"name": started.state.name, "pid": started.state.pid}
except LauncherError as e:
    for started in out["containers"].values():
        os.kill(started["pid"], 9)
    network.remove(net)
    print(json.dumps(out))
    print(e.render(), file=sys.stderr)
    sys.exit(e.exit_code)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with open(log_path) as f:
        if sum(line.startswith("ready ") for line in f) >= len(services):
            break
    time.sleep(0.05)
print(json.dumps(out))
"""

CLIENT = r"""
import sys, urllib.request
for url in sys.argv[1:]:
    print(url, urllib.request.urlopen(url, timeout=5).read().decode())
"""

NO_ROUTE = r"""
import errno, json, socket, time
s = socket.socket()
s.settimeout(5)
began = time.monotonic()
try:
    s.connect(("10.99.0.1", 80))
    error = "connected"
except OSError as e:
    error = errno.errorcode.get(e.errno, str(e.errno))
seconds = time.monotonic() - began
routes = [line.split()[:2] for line in open("/proc/net/route").read().splitlines()[1:]]
print(json.dumps({"error": error, "seconds": seconds, "routes": routes, "resolv": open("/etc/resolv.conf").read()}))
"""


@pytest.fixture(scope="module")
def app_image() -> Iterator[str]:
    """The built //app:image, copied where uid 65534 can read it."""
    tmp = Path(tempfile.mkdtemp(prefix="pbuild-stacknet-"))
    try:
        ws = clone_app_workspace(tmp / "clone")
        built = Runner(tmp / "runner")("build", "//app:image", cwd=ws, timeout=600)
        assert built.code == 0, built
        layout = tmp / "oci"
        shutil.copytree(ws / "pbuild-out/app/image/oci", layout)
        for path in [tmp, layout, *layout.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        yield f"oci:{layout}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def layer_stores() -> Iterator[Path]:
    """One layer store per user for the module (unpacking the image once, not once per test)."""
    top = Path(tempfile.mkdtemp(prefix="pbuild-stacknet-layers-"))
    os.chmod(top, 0o755)
    try:
        yield top
    finally:
        from pbuild.tools.fstree import remove_tree

        remove_tree(str(top))


@pytest.fixture(params=USERS)
def launcher_user(request: pytest.FixtureRequest, layer_stores: Path) -> Iterator[LauncherUser]:
    """Run the test as root, then as uid 65534; every holder it started is removed afterwards."""
    with user_folder(request.param) as user:
        store = layer_stores / user.name
        if not store.exists():
            store.mkdir()
            os.chown(store, user.uid, user.uid)
        user.env["PBUILD_LAYER_STORE"] = str(store)
        try:
            yield user
        finally:
            for record in user.base.glob("*/network.json"):
                with contextlib.suppress(Exception):
                    held = network.load(str(record.parent))
                    if held is not None:
                        network.remove(held)


def as_user(
    user: LauncherUser, script: str, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*user.prefix(), sys.executable, "-c", script, *args], env=user.env, cwd=user.base,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def up(
    user: LauncherUser, image: str, services: list[dict[str, Any]], expect_ok: bool = True
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    stack_dir = user.base / "stack"
    stack_dir.mkdir(exist_ok=True)
    user.give(stack_dir)
    result = as_user(user, DRIVER, image, str(stack_dir), json.dumps(services), SERVER)
    if expect_ok:
        assert result.returncode == 0, result.stderr + (stack_dir / "services.log").read_text()
    return json.loads(result.stdout.splitlines()[-1]) if result.stdout.strip() else {}, result


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_in_userns(inode: int, wait: float = 5.0) -> list[str]:
    """The processes in the user namespace ``inode``, after waiting up to ``wait`` s for none."""
    deadline = time.monotonic() + wait
    while True:
        found = _in_userns(inode)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _in_userns(inode: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/user").st_ino == inode:
                    found.append(f"{entry} {Path(f'/proc/{entry}/cmdline').read_bytes()[:80]!r}")
    return found


def down(user: LauncherUser, stack: dict[str, Any]) -> None:
    names = [c["name"] for c in stack["containers"].values()]
    if names:
        removed = user.launch("rm", "-f", *names)
        assert removed.returncode == 0, removed.stderr
    network.remove(network.StackNetwork(**stack["network"]))


def test_services_reach_each_other_by_name(launcher_user: LauncherUser, app_image: str) -> None:
    user = launcher_user
    stack, _ = up(user, app_image, [{"name": "a"}, {"name": "b"}])
    held = network.StackNetwork(**stack["network"])
    assert network.alive(held)  # the driver that started it has exited
    try:
        # both listen on 8080, each in its own namespace; names and container names resolve
        result = user.launch("exec", "st-a-1", "/usr/bin/python3.11", "-c", CLIENT,
                             "http://b:8080/", "http://st-b-1:8080/", "http://a:8080/")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "http://b:8080/ b", "http://st-b-1:8080/ b", "http://a:8080/ a"
        ]  # fmt: skip
        back = user.launch("exec", "st-b-1", "/usr/bin/python3.11", "-c", CLIENT, "http://st-a-1:8080/")
        assert back.returncode == 0 and back.stdout == "http://st-a-1:8080/ a\n", back.stderr
        hosts = user.launch("exec", "st-b-1", "/usr/bin/python3.11", "-c", "print(open('/etc/hosts').read())")
        a, b = (stack["addresses"][s].partition("/")[0] for s in ("a", "b"))
        assert f"{a}\ta st-a-1" in hosts.stdout and f"{b}\tb st-b-1" in hosts.stdout, hosts.stdout
        mac = user.launch(
            "exec", "st-b-1", "/usr/bin/python3.11", "-c", "print(open('/sys/class/net/eth0/address').read())"
        )
        assert mac.stdout.strip() == "02:42:0a:59:00:" + format(int(b.rsplit(".", 1)[1]), "02x"), mac
        state = json.loads(next((user.base / "run/containers").glob("*/state.json")).read_text())
        assert state["extra"]["labels"]["stack"] == "st"
        assert state["extra"]["network"]["address"] in stack["addresses"].values()
    finally:
        down(user, stack)
    assert not network.alive(held)
    assert processes_in_userns(stack["userns"]) == []  # holder, monitors, containers: all gone
    network.remove(held)  # a holder already gone is fine


# Run as the test's user: service NAME started again at its address, on the network that the
# stack's folder records (as a supervisor restarting a service, or one started after a crash).
RESTART = r"""
import json, os, sys, time
from pbuild.tools.launcher import process, run
from pbuild.tools.launcher.config import RunOptions
from pbuild.tools.stack import network

stack_dir, name, addresses, image, server = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
net = network.load(stack_dir)
assert net is not None and network.alive(net)
join = network.join_record(net, addresses[name], network.hosts_entries("st", addresses))
log_path = os.path.join(stack_dir, "services.log")
log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
null = os.open(os.devnull, os.O_RDWR)
options = RunOptions(image=image, entrypoint="/usr/bin/python3.11", command=("-c", server), env=(f"WHO={name}2",),
                     name=f"st-{name}-1", detach=True, join=join)
run.start_container(options, process.Stdio(null, log, log))
deadline = time.monotonic() + 60
while time.monotonic() < deadline and f"ready {name}2\n" not in open(log_path).read():
    time.sleep(0.05)
"""


def test_a_service_started_again_at_its_address_is_reached_at_once(
    launcher_user: LauncherUser, app_image: str
) -> None:
    user = launcher_user
    stack, _ = up(user, app_image, [{"name": "a"}, {"name": "b"}])
    try:
        first = user.launch("exec", "st-a-1", "/usr/bin/python3.11", "-c", CLIENT, "http://b:8080/")
        assert first.stdout == "http://b:8080/ b\n", first.stderr  # a has b's MAC in its neighbour cache now
        assert user.launch("rm", "-f", "st-b-1").returncode == 0
        again = as_user(
            user, RESTART, str(user.base / "stack"), "b", json.dumps(stack["addresses"]), app_image, SERVER
        )
        assert again.returncode == 0, again.stderr
        began = time.monotonic()
        second = user.launch("exec", "st-a-1", "/usr/bin/python3.11", "-c", CLIENT, "http://b:8080/")
        assert second.stdout == "http://b:8080/ b2\n", second.stderr
        assert time.monotonic() - began < 3  # no wait for a stale neighbour entry to be probed away
    finally:
        down(user, stack)


def test_published_ports_reach_the_service_from_the_host(launcher_user: LauncherUser, app_image: str) -> None:
    user = launcher_user
    http_port, tcp_port, udp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    published = [[http_port, 8080, "tcp"], [tcp_port, 9000, "tcp"], [udp_port, 9001, "udp"]]
    stack, _ = up(user, app_image, [{"name": "a", "publish": published}, {"name": "b"}])
    try:
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b"".join(iter(lambda: s.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"\r\n\r\na"), reply
        # 4 MiB one way, then EOF: the service answers only after it saw the end (half-close)
        payload = os.urandom(4 << 20)
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=20) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(10)
            u.sendto(b"ping", ("127.0.0.1", udp_port))
            assert u.recvfrom(65536)[0] == b"a:ping"
        listed = user.launch("ps")
        assert listed.returncode == 0 and "PORTS" in listed.stdout.splitlines()[0], listed
        row = next(line for line in listed.stdout.splitlines() if line.endswith("st-a-1"))
        assert (
            f"127.0.0.1:{http_port}->8080/tcp, 127.0.0.1:{tcp_port}->9000/tcp, 127.0.0.1:{udp_port}->9001/udp"
            in row
        )
    finally:
        down(user, stack)
    with socket.socket() as again:  # the port is free once the service is gone
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", http_port))


def test_a_port_in_use_is_a_clear_error_and_leaves_nothing(
    launcher_user: LauncherUser, app_image: str
) -> None:
    user = launcher_user
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack, result = up(user, app_image, [{"name": "a"}, {"name": "b", "publish": [[port, 8080, "tcp"]]}], expect_ok=False)  # fmt: skip
    assert result.returncode == 125, result.stderr
    assert f"cannot publish port 127.0.0.1:{port}/tcp: it is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    names = sorted(p.name for p in (user.base / "run/names").iterdir())
    assert names == ["st-a-1"]  # b left no record; a was started before and is the driver's to stop
    assert len(os.listdir(user.base / "run/containers")) == 1
    assert processes_in_userns(stack["userns"]) == []


def test_a_stale_holder_is_refused(launcher_user: LauncherUser, app_image: str) -> None:
    stack, result = up(launcher_user, app_image, [{"name": "a", "stale": True}], expect_ok=False)
    assert result.returncode == 125, result.stderr
    assert "the stack's network is gone (its holder, pid" in result.stderr, result.stderr
    containers = launcher_user.base / "run/containers"
    assert not containers.exists() or not list(containers.iterdir())  # refused before any record


def test_no_outbound_unless_asked(launcher_user: LauncherUser, app_image: str) -> None:
    user = launcher_user
    stack, _ = up(user, app_image, [{"name": "a"}])
    try:
        result = user.launch("exec", "st-a-1", "/usr/bin/python3.11", "-c", NO_ROUTE)
        assert result.returncode == 0, result.stderr
        facts = json.loads(result.stdout)
        assert facts["error"] == "ENETUNREACH" and facts["seconds"] < 1, facts  # at once: no route
        assert facts["routes"] == [["eth0", "0000590A"]]  # 10.89.0.0/24 only
        assert "the stack's names are in /etc/hosts" in facts["resolv"]
    finally:
        down(user, stack)


def test_outbound_gets_a_default_route(launcher_user: LauncherUser, app_image: str) -> None:
    user = launcher_user
    tun = os.stat("/dev/net/tun")
    usable = user.uid == 0 or tun.st_mode & 0o006 == 0o006
    stack, result = up(user, app_image, [{"name": "a", "outbound": True}], expect_ok=usable)
    if not usable:  # this machine's /dev/net/tun is root's only: slirp4netns cannot run for nobody
        assert result.returncode == 125
        assert "need read and write access to /dev/net/tun" in result.stderr, result.stderr
        return
    try:
        result = user.launch("exec", "st-a-1", "/usr/bin/python3.11", "-c", NO_ROUTE)
        assert result.returncode == 0, result.stderr
        facts = json.loads(result.stdout)
        assert ["tap0", "00000000"] in facts["routes"], facts  # the default route, through slirp4netns
        assert ["eth0", "0000590A"] in facts["routes"], facts
        assert "nameserver 10.0.2.3" in facts["resolv"]
    finally:
        down(user, stack)


# start_container as a supervisor calls it: its own pipes for stdout and stderr, the monitor its
# child (waitpid gives the container's exit code), a failed start raised and nothing left.
START = r"""
import json, os, sys
from pbuild.tools.launcher import process, run
from pbuild.tools.launcher.config import RunOptions
from pbuild.tools.launcher.errors import LauncherError

image = sys.argv[1]
null = os.open(os.devnull, os.O_RDWR)
out_r, out_w = os.pipe()
err_r, err_w = os.pipe()
options = RunOptions(image=image, command=("sh", "-c", "echo out; echo err >&2; exit 3"), name="one", detach=True,
                     labels=(("service", "one"),))
started = run.start_container(options, process.Stdio(null, out_w, err_w))
os.close(out_w)
os.close(err_w)
out = b"".join(iter(lambda: os.read(out_r, 65536), b"")).decode()
err = b"".join(iter(lambda: os.read(err_r, 65536), b"")).decode()
status = os.waitstatus_to_exitcode(os.waitpid(started.monitor_pid, 0)[1])
try:
    run.start_container(RunOptions(image=image, command=("/nowhere",), name="two", detach=True),
                        process.Stdio(null, null, null))
    failed = None
except LauncherError as e:
    failed = [e.exit_code, e.message]
runtime = os.environ["PBUILD_RUNTIME_DIR"]
print(json.dumps({"state": started.state._asdict(), "out": out, "err": err, "status": status, "failed": failed,
                  "names": sorted(os.listdir(os.path.join(runtime, "names")))}))
"""


def test_start_container_for_a_program(launcher_user: LauncherUser) -> None:
    from tests.support.testimages import make_busybox_image

    user = launcher_user
    layout = make_busybox_image(user.base / "img")
    user.give(user.base)
    result = as_user(user, START, f"oci:{layout}")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["state"]["status"] == "running" and facts["state"]["pid"] > 0
    assert facts["state"]["extra"]["labels"] == {"service": "one"}
    assert (facts["out"], facts["err"], facts["status"]) == ("out\n", "err\n", 3)
    assert facts["failed"] == [127, "/nowhere: executable file not found in $PATH"]
    assert facts["names"] == ["one"]  # the failed start left no container behind
