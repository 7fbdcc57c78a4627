"""The launcher end to end: real namespaces, real overlayfs, a real busybox image."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.support.launcher import LAUNCHER, launch, run_ok
from tests.support.launcher_users import run_script_as_nobody

PROBE = r"""
echo "pid=$$"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "hostname=$(hostname)"
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ',')"
echo "host_file=$(test -e /etc/debian_version && echo visible || echo hidden)"
grep -E '^(NoNewPrivs|CapBnd|CapEff|Uid)' /proc/self/status | tr -d '\t' | sed 's/:/=/'
echo "timer_list=$(wc -c < /proc/timer_list)"
echo "acpi=$(ls -A /proc/acpi 2>/dev/null | wc -l)"
echo "firmware=$(ls -A /sys/firmware | wc -l)"
echo "sysrq=$(echo h 2>/dev/null > /proc/sysrq-trigger && echo writable || echo refused)"
echo "sys=$(touch /sys/pbuild 2>/dev/null && echo writable || echo refused)"
echo "mount=$(mount -t tmpfs none /mnt 2>/dev/null && echo allowed || echo refused)"
echo "devices=$(ls /dev | tr '\n' ',')"
echo "umask=$(umask)"
echo "nofile=$(ulimit -n)"
echo "cwd=$(pwd)"
echo "etc_hostname=$(cat /etc/hostname)"
"""

DEFAULT_CAPS = "00000000a80425fb"


def parse_probe(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def check_probe(facts: dict[str, str], name: str) -> None:
    assert facts["pid"] == "1"
    assert int(facts["procs"]) <= 4  # sh and its pipeline
    assert facts["hostname"] == name != socket.gethostname()
    assert facts["etc_hostname"] == name
    assert facts["ifaces"] == "lo,"
    assert facts["host_file"] == "hidden"
    assert facts["NoNewPrivs"] == "1"
    assert facts["CapBnd"] == DEFAULT_CAPS
    assert facts["CapEff"] == DEFAULT_CAPS
    assert facts["timer_list"] == "0"  # masked (it exists and is large on the host)
    assert facts["acpi"] == "0"
    assert facts["firmware"] == "0"
    assert facts["sysrq"] == "refused"
    assert facts["sys"] == "refused"
    assert facts["mount"] == "refused"  # no CAP_SYS_ADMIN
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd"):
        assert f"{dev}," in facts["devices"]
    assert facts["umask"] == "0022"
    assert facts["cwd"] == "/app"


def test_probe_matrix(env: dict[str, str], image: str) -> None:
    out = run_ok(env, "run", "--rm", "--name", "probe", image, "--", "sh", "-c", PROBE)
    check_probe(parse_probe(out), "probe")


def test_image_config_and_flags(env: dict[str, str], image: str, tmp_path: Path) -> None:
    assert run_ok(env, "run", "--rm", image) == "hi\n"  # the image's Cmd
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\n\nFOO=from-file\n")
    out = run_ok(
        env, "run", "--rm", "-e", "A=1", "--env-file", str(env_file), "-w", "/tmp", "--hostname", "h1", image,
        "sh", "-c", "echo $A $FOO $FROM_FILE $HOSTNAME $HOME; pwd",
    )  # fmt: skip
    assert out == "1 from-file 1 h1 /root\n/tmp\n"
    out = run_ok(env, "run", "--rm", "--entrypoint", "/bin/echo", image, "--", "entry", "point")
    assert out == "entry point\n"
    assert (
        run_ok(env, "run", "--rm", "-u", "app", image, "--", "id")
        == "uid=1000(app) gid=1000(app) groups=2000(extra)\n"
    )
    assert run_ok(env, "run", "--rm", "-u", "1000:2000", image, "--", "id", "-g") == "2000\n"


def test_read_only_root(env: dict[str, str], image: str) -> None:
    out = launch(env, "run", "--rm", "--read-only", image, "--", "sh", "-c",
                 "touch /app/x 2>&1; echo rc=$?; touch /tmp/x && echo tmp-ok; touch /run/x && echo run-ok")  # fmt: skip
    assert "Read-only file system" in out.stdout
    assert "tmp-ok" in out.stdout and "run-ok" in out.stdout


def test_writes_go_to_upper_and_layer_store_is_untouched(
    env: dict[str, str], image: str, layer_store: Path
) -> None:
    script = "echo changed > /app/hello.txt; echo new > /app/new.txt; cat /app/hello.txt"
    assert run_ok(env, "run", "--name", "keep", image, "--", "sh", "-c", script) == "changed\n"
    runtime = Path(env["PBUILD_RUNTIME_DIR"])
    (container,) = list((runtime / "containers").iterdir())
    assert (container / "upper/app/new.txt").read_text() == "new\n"
    assert (container / "upper/app/hello.txt").read_text() == "changed\n"
    originals = [p for p in layer_store.rglob("hello.txt")]
    assert originals and all(p.read_text() == "hello from layer 2\n" for p in originals)
    # A fresh container sees the image, not the other container's writes.
    assert run_ok(env, "run", "--rm", image, "--", "cat", "/app/hello.txt") == "hello from layer 2\n"
    run_ok(env, "rm", "keep")
    assert not container.exists()
    run_ok(env, "run", "--rm", image, "--", "sh", "-c", "echo x > /app/y")
    assert list((runtime / "containers").iterdir()) == []


def test_container_mounts_stay_inside(env: dict[str, str], image: str) -> None:
    container_id = run_ok(env, "run", "-d", "--name", "m", image, "--", "sleep", "30").strip()
    try:
        state = json.loads(
            Path(env["PBUILD_RUNTIME_DIR"], "containers", container_id, "state.json").read_text()
        )
        assert sorted(os.listdir(f"/proc/{state['pid']}/fd")) == ["0", "1", "2"]  # every fd >= 3 closed
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert container_id not in mountinfo
        assert "/proc/acpi" not in mountinfo.replace("/proc/acpi ", "")  # nothing masked here
    finally:
        run_ok(env, "rm", "-f", "m")


@pytest.mark.parametrize(
    ("options", "command", "code", "message"),
    [
        ((), ("sh", "-c", "exit 3"), 3, ""),
        ((), ("no-such-command",), 127, "not found"),
        ((), ("/etc/passwd",), 126, "Permission denied"),
        (("--init",), ("sh", "-c", "kill -9 $$"), 137, ""),
        ((), ("sh", "-c", "kill -9 $$; exit 4"), 4, ""),  # PID 1 ignores signals it has no handler for
        (("-w", "/nonexistent/dir"), ("true",), 0, ""),  # Docker creates the working directory
        (("-u", "nobody-here"), ("true",), 125, "unable to find user"),
        (("--bogus-flag",), (), 125, "unrecognized arguments"),
        (("-v", "/no/such/path:/x"), ("true",), 125, "does not exist"),
        (("--memory", "1k"), ("true",), 125, "minimum"),
        (("--memory", "lots"), ("true",), 125, "invalid --memory"),
        (("--pids-limit", "0"), ("true",), 125, "at least 1"),
        ((), ("-e", "A=1", "true"), 125, "-e after the image: options go before the image"),
        (("--platform", "linux/s390x"), ("true",), 125, "--platform linux/s390x: not a platform pbuild runs"),
    ],
)
def test_exit_codes(env: dict[str, str], image: str, options: tuple[str, ...], command: tuple[str, ...],
                    code: int, message: str) -> None:
    result = launch(env, "run", "--rm", *options, image, *command)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_bad_image_references(env: dict[str, str], tmp_path: Path) -> None:
    for ref, message in (
        (f"oci:{tmp_path}/missing", "is not a directory"),
        ("//app:image", "unknown image transport"),
        ("app-image", "no transport"),
        (f"docker-archive:{tmp_path}/missing.tar", "cannot read docker archive"),
    ):
        result = launch(env, "run", ref)
        assert result.returncode == 125
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def _wait_for_line(proc: subprocess.Popen[str], wanted: str, timeout: float = 20) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == wanted:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never saw {wanted!r}; stderr: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_reach_the_container(env: dict[str, str], image: str, sig: signal.Signals) -> None:
    script = f'trap "echo got; exit {sig + 40}" {sig.name.removeprefix("SIG")}; echo ready; while :; do sleep 0.05; done'
    proc = subprocess.Popen([*LAUNCHER, "run", "--rm", image, "--", "sh", "-c", script], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _wait_for_line(proc, "ready")
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == sig + 40
    assert proc.stdout is not None and proc.stdout.read() == "got\n"


def test_signal_with_init_kills_a_plain_command(env: dict[str, str], image: str) -> None:
    proc = subprocess.Popen([*LAUNCHER, "run", "--rm", "--init", image, "--", "sh", "-c", "echo ready; exec sleep 60"],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM


def test_lifecycle_round_trip(env: dict[str, str], image: str) -> None:
    script = 'echo started; trap "echo stopping; exit 7" TERM; while :; do sleep 0.05; done'
    container_id = run_ok(env, "run", "-d", "--name", "web", image, "--", "sh", "-c", script).strip()
    assert len(container_id) == 64
    ps = run_ok(env, "ps")
    assert "web" in ps and container_id[:12] in ps and "Up" in ps
    deadline = time.monotonic() + 10
    while "started" not in run_ok(env, "logs", "web") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_ok(env, "logs", "web") == "started\n"
    assert launch(env, "run", "-d", "--name", "web", image).returncode == 125  # name in use
    out = run_ok(env, "exec", "web", "sh", "-c", "echo $$ $FOO; hostname; cat /proc/1/cmdline | tr '\\0' ' '")
    pid, foo, hostname, init_cmd = out.split(maxsplit=3)
    assert pid != "1" and foo == "bar" and hostname == "web" and init_cmd.startswith("sh -c echo started")
    assert launch(env, "exec", "web", "sh", "-c", "exit 9").returncode == 9
    assert run_ok(env, "exec", "-i", "web", "cat", input="via stdin\n") == "via stdin\n"
    assert run_ok(env, "exec", "-t", "web", "tty").strip().startswith("/dev/pts/")
    assert launch(env, "rm", "web").returncode == 1  # running: needs -f (Docker: 1)
    assert run_ok(env, "stop", "-t", "5", "web") == "web\n"
    assert "Exited (7)" in run_ok(env, "ps", "-a")
    assert "web" not in run_ok(env, "ps")
    assert run_ok(env, "logs", "web") == "started\nstopping\n"
    assert launch(env, "exec", "web", "true").returncode == 1  # not running (Docker: 1)
    assert run_ok(env, "rm", "web") == "web\n"
    assert "web" not in run_ok(env, "ps", "-a")
    assert launch(env, "logs", "web").returncode == 1  # no such container (Docker: 1)


@pytest.mark.parametrize("command", [("rm",), ("rm", "-f"), ("logs",), ("stop",), ("exec",)])
def test_unknown_container_exits_1(env: dict[str, str], command: tuple[str, ...]) -> None:
    """As ``docker rm NAME``: exit 1 and "No such container", not the launcher's own 125."""
    args = [*command, "nosuch", *(["true"] if command == ("exec",) else [])]
    result = launch(env, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("pbuild: error: no such container: nosuch\n")
    assert "Traceback" not in result.stderr


def test_stop_escalates_to_sigkill(env: dict[str, str], image: str) -> None:
    run_ok(env, "run", "-d", "--name", "stubborn", image, "--", "sleep", "60")  # PID 1 ignores SIGTERM
    start = time.monotonic()
    run_ok(env, "stop", "-t", "0.5", "stubborn")
    assert time.monotonic() - start < 8
    assert f"Exited ({128 + signal.SIGKILL})" in run_ok(env, "ps", "-a")
    run_ok(env, "rm", "stubborn")


def test_stop_of_an_auto_removed_container_succeeds(env: dict[str, str], image: str) -> None:
    """`run --rm -d` then `stop`: the container removes itself while stop waits; that is success."""
    run_ok(env, "run", "-d", "--rm", "--init", "--name", "gone", image, "--", "sleep", "60")
    assert run_ok(env, "stop", "-t", "5", "gone") == "gone\n"
    assert "gone" not in run_ok(env, "ps", "-a")


def test_logs_follow(env: dict[str, str], image: str) -> None:
    run_ok(
        env,
        "run",
        "-d",
        "--name",
        "talker",
        image,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo $i; sleep 0.1; done",
    )
    assert run_ok(env, "logs", "-f", "talker") == "1\n2\n3\n"
    run_ok(env, "rm", "talker")


def test_volumes(env: dict[str, str], image: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    out = launch(
        env, "run", "--rm", "-v", f"{shared}:/data", "-v", f"{shared}:/ro:ro", image, "--", "sh", "-c",
        "cat /data/in.txt; echo out > /data/out.txt; echo no > /ro/no.txt",
    )  # fmt: skip
    assert out.stdout == "from host\n"
    assert "Read-only file system" in out.stderr
    assert (shared / "out.txt").read_text() == "out\n"
    assert not (shared / "no.txt").exists()


def test_tty_and_interactive(env: dict[str, str], image: str) -> None:
    out = run_ok(env, "run", "--rm", "-t", image, "--", "sh", "-c", "tty; stty size; echo $TERM")
    assert out.replace("\r\n", "\n") == "/dev/pts/0\n24 80\nxterm\n"
    assert (
        run_ok(env, "run", "--rm", "-i", image, "--", "sh", "-c", "cat; echo done", input="line\n")
        == "line\ndone\n"
    )
    result = launch(
        env, "run", "--rm", "-i", "-t", image, "--", "sh", "-c", "read x; echo got:$x; exit 5", input="abc\n"
    )
    assert result.returncode == 5
    assert "got:abc" in result.stdout


def _read_until(fd: int, wanted: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_tty_on_a_terminal_follows_window_size(env: dict[str, str], image: str) -> None:
    """Run as from a terminal: raw mode while it runs, the window size passed on at start and
    again on SIGWINCH, and the terminal's settings restored afterwards."""
    master, slave = os.openpty()
    _set_size(slave, 30, 100)
    before = termios.tcgetattr(slave)
    script = "stty size; read x; stty size; exit 3"
    proc = subprocess.Popen([*LAUNCHER, "run", "--rm", "-i", "-t", image, "--", "sh", "-c", script], env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)  # fmt: skip
    try:
        assert b"30 100" in _read_until(master, b"30 100")
        _set_size(slave, 40, 120)
        proc.send_signal(signal.SIGWINCH)
        time.sleep(0.2)
        os.write(master, b"go\r")
        assert b"40 120" in _read_until(master, b"40 120")
        assert proc.wait(timeout=20) == 3
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_network_host_and_none(env: dict[str, str], image: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve() -> None:  # answer and hang up, so that nc in the container ends
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    connection.sendall(b"pong\n")
                    connection.close()

        threading.Thread(target=serve, daemon=True).start()
        probe = f"nc -w 2 127.0.0.1 {port} </dev/null | grep -q pong && echo reached || echo unreachable"
        assert run_ok(env, "run", "--rm", image, "--", "sh", "-c", probe) == "unreachable\n"
        assert run_ok(env, "run", "--rm", "--network", "host", image, "--", "sh", "-c", probe) == "reached\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_published_port(env: dict[str, str], image: str, tmp_path: Path) -> None:
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served from the container\n")
    port = _free_port()
    run_ok(env, "run", "-d", "--name", "srv", "-p", f"{port}:8080", "-v", f"{www}:/www:ro", image, "--",
           "httpd", "-f", "-p", "8080", "-h", "/www")  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        body = b""
        while time.monotonic() < deadline and b"served" not in body:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                body = b"".join(iter(lambda: c.recv(4096), b""))
            time.sleep(0.05)
        assert b"served from the container" in body
        assert "nameserver 10.0.2.3" in run_ok(env, "exec", "srv", "cat", "/etc/resolv.conf")
    finally:
        run_ok(env, "rm", "-f", "srv")
    busy = launch(env, "run", "--rm", "-p", f"{port}:80", "-p", f"{port}:81", image, "--", "true")
    assert busy.returncode == 125 and f"cannot publish port {port}->81" in busy.stderr
    assert launch(env, "run", "--rm", "-p", "1:1", "--network", "host", image).returncode == 125


def test_docker_archive(env: dict[str, str], image: str, tmp_path: Path) -> None:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    archive = tmp_path / "image.tar"
    subprocess.run(["skopeo", "copy", f"{image}:latest", f"docker-archive:{archive}:busybox:test"], check=True,
                   capture_output=True)  # fmt: skip
    assert (
        run_ok(env, "run", "--rm", f"docker-archive:{archive}", "--", "cat", "/app/hello.txt")
        == "hello from layer 2\n"
    )


IN_PROCESS = r"""
import json, os, sys
from pbuild.tools.launcher import main
def fds():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the directory listing's own fd
    return found
before = (fds(), os.stat("/").st_ino, os.getcwd(), os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/user"))
codes = [main(["run", "--rm", sys.argv[1], "--", "sh", "-c", "echo inside; exit 6"]), main(["run", "oci:/nonexistent"])]
after = (fds(), os.stat("/").st_ino, os.getcwd(), os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/user"))
sys.stdout.flush()
print(json.dumps({"codes": codes, "same": before == after}))
"""


def test_in_process_main(env: dict[str, str], image: str) -> None:
    """The engine calls main() in its own process: no namespace, root, cwd or fd may change."""
    result = subprocess.run([sys.executable, "-c", IN_PROCESS, image], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == "inside", result.stderr
    assert json.loads(lines[1]) == {"codes": [6, 125], "same": True}


def _cgroup_dirs() -> set[str]:
    found = set()
    for base, _dirs, _files in os.walk("/sys/fs/cgroup"):
        if os.path.basename(base).startswith("pbuild-"):
            found.add(base)
    return found


def test_resource_limits(env: dict[str, str], image: str) -> None:
    if os.geteuid() != 0 and not os.access("/sys/fs/cgroup/cgroup.controllers", os.W_OK):
        pytest.skip("cgroups are not usable by this user")
    before = _cgroup_dirs()
    forks = launch(env, "run", "--rm", "--pids-limit", "6", image, "--", "sh", "-c",
                   "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait")  # fmt: skip
    assert "can't fork" in forks.stderr
    hog = launch(env, "run", "--rm", "--memory", "16m", image, "--", "sh", "-c",
                 "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}")  # fmt: skip
    assert hog.returncode == 128 + signal.SIGKILL  # the OOM killer, inside the container's cgroup only
    out = run_ok(
        env, "run", "--rm", "--cpus", "0.5", "--memory", "64m", image, "--", "cat", "/proc/self/cgroup"
    )
    assert "pbuild-" in out
    assert _cgroup_dirs() == before  # removed with the container


def test_killed_launcher_leaves_removable_state(env: dict[str, str], image: str) -> None:
    proc = subprocess.Popen([*LAUNCHER, "run", "--name", "orphan", image, "--", "sh", "-c", "echo ready; sleep 60"],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _wait_for_line(proc, "ready")
    state = next(Path(env["PBUILD_RUNTIME_DIR"], "containers").glob("*/state.json"))
    pid = json.loads(state.read_text())["pid"]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()  # the container died with its launcher
    assert "orphan" not in run_ok(env, "ps")
    assert "orphan" in run_ok(env, "ps", "-a")
    assert run_ok(env, "rm", "orphan") == "orphan\n"
    assert list(Path(env["PBUILD_RUNTIME_DIR"], "containers").iterdir()) == []


def test_flattened_fallback(env: dict[str, str], image: str, tmp_path: Path) -> None:
    env = {**env, "PBUILD_LAUNCHER_NO_OVERLAY": "1", "PBUILD_LAYER_STORE": str(tmp_path / "flat-store")}
    first = launch(env, "run", "--rm", image, "--", "sh", "-c", "cat /app/hello.txt; echo x > /app/hello.txt")
    assert first.stdout == "hello from layer 2\n"
    assert "flattened copy" in first.stderr
    second = launch(env, "run", "--rm", image, "--", "cat", "/app/hello.txt")
    assert second.stdout == "hello from layer 2\n"
    assert "flattened" not in second.stderr  # told once


UNPRIVILEGED = r"""
import json, os, sys, tempfile
from pbuild.tools.launcher import main
image, probe, shared = sys.argv[1], sys.argv[2], sys.argv[3]
def run(*args):
    # main() in a forked child with its output in files (this user may not exec our python).
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        code = main(list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out.seek(0)
    err.seek(0)
    return {"code": code, "out": out.read().decode(), "err": err.read().decode()}
report = {
    "probe": run("run", "--rm", "--name", "np", image, "--", "sh", "-c", probe),
    "id": run("run", "--rm", image, "--", "id", "-u"),
    "codes": [run("run", "--rm", image, "--", "sh", "-c", "exit 3")["code"],
              run("run", "--rm", image, "--", "nope")["code"],
              run("run", "--rm", "--init", image, "--", "sh", "-c", "kill -9 $$")["code"]],
    "user": run("run", "--rm", "-u", "app", image, "--", "id"),
    "volume": run("run", "--rm", "-v", f"{shared}:/data", "-v", f"{shared}:/ro:ro", image, "--", "sh", "-c",
                  "cat /data/in.txt; echo w > /data/w.txt; echo n > /ro/n.txt"),
    "detached": run("run", "-d", "--name", "bg", image, "--", "sh", "-c", "echo up; sleep 60"),
}
state = json.load(open(os.path.join(os.environ["PBUILD_RUNTIME_DIR"], "containers", report["detached"]["out"].strip(), "state.json")))
report["fds"] = sorted(os.listdir(f"/proc/{state['pid']}/fd"))
report["exec"] = run("exec", "bg", "hostname")
report["memory"] = run("run", "--rm", "--memory", "32m", image, "--", "true")
report["publish"] = run("run", "--rm", "-p", "0:80", image, "--", "sh", "-c", "ip -o addr show tap0 | wc -l")
report["stop"] = run("stop", "-t", "0.5", "bg")
report["ps"] = run("ps", "-a")
report["rm"] = run("rm", "bg")
print(json.dumps(report))
"""


@pytest.mark.slow
def test_unprivileged_user(image: str, tmp_path: Path) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    with tempfile.TemporaryDirectory(prefix="pbuild-launcher-") as base:
        home = Path(base)
        shared = home / "shared"
        shared.mkdir()
        (shared / "in.txt").write_text("host\n")
        layout = Path(base) / "image"
        shutil.copytree(image.removeprefix("oci:"), layout)
        proc = run_script_as_nobody(home, UNPRIVILEGED, f"oci:{layout}", PROBE, str(shared))
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["probe"]["code"] == 0, report["probe"]["err"]
        check_probe(parse_probe(report["probe"]["out"]), "np")
        assert report["id"]["out"] == "0\n"  # container root is the calling user
        assert report["codes"] == [3, 127, 137]
        assert report["user"]["code"] == 125 and "only root is mapped" in report["user"]["err"]
        assert report["volume"]["out"] == "host\n" and "Read-only" in report["volume"]["err"]
        assert (shared / "w.txt").stat().st_uid == 65534
        assert not (shared / "n.txt").exists()
        assert report["detached"]["code"] == 0, report["detached"]["err"]
        assert report["fds"] == ["0", "1", "2"]
        assert report["exec"]["out"] == "bg\n"
        memory = report["memory"]
        assert memory["code"] == 0 or (memory["code"] == 125 and "cgroup" in memory["err"]), memory
        publish = report["publish"]  # this machine's /dev/net/tun is 0600: then a clear refusal
        assert publish["out"] == "1\n" or (publish["code"] == 125 and "/dev/net/tun" in publish["err"]), (
            publish
        )
        assert report["stop"]["code"] == 0
        assert "Exited (137)" in report["ps"]["out"]
        assert report["rm"]["code"] == 0, report["rm"]["err"]
        assert not any((home / "run" / "containers").iterdir())
