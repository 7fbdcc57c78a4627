"""The action sandbox, with real namespaces (root and an unprivileged user)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pbuild.tools.sandbox import (
    EXEC_ROOT,
    NOT_IN_TOOLCHAIN,
    SandboxRequest,
    SandboxResult,
    missing_from_toolchain,
    nsops,
    run_sandboxed,
)
from pbuild.tools.sandbox.plan import plan

from tests.support.hosttree import build_tree
from tests.support.paths import REPO

ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "SOURCE_DATE_EPOCH": "0",
    "HOME": "/tmp",
    "PYTHONHASHSEED": "0",
}
BACKENDS = ["bwrap", "fork"] if shutil.which("bwrap") else ["fork"]


@pytest.fixture(autouse=True, params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs against both backends: bubblewrap and our own forked setup."""
    monkeypatch.setenv("PBUILD_SANDBOX_BACKEND", request.param)
    return str(request.param)


def make_request(tmp: Path, *argv: str, **overrides: object) -> SandboxRequest:
    exec_root = tmp / "execroot"
    if not exec_root.exists():
        (exec_root / "pkg" / "out").mkdir(parents=True)
        (exec_root / "pkg" / "in.txt").write_text("declared input\n")
    fields: dict[str, object] = dict(
        argv=argv,
        env=ENV,
        exec_root=str(exec_root),
        writable_dirs=("pkg/out",),
        workdir="",
        hide_paths=(str(REPO),),
        stdout_path=str(tmp / "stdout"),
        stderr_path=str(tmp / "stderr"),
    )
    fields.update(overrides)
    return SandboxRequest(**fields)  # type: ignore[arg-type]


def run(tmp: Path, script: str, **overrides: object) -> tuple[SandboxResult, str, str]:
    result = run_sandboxed(make_request(tmp, "/bin/sh", "-c", script, **overrides))
    return result, (tmp / "stdout").read_text(), (tmp / "stderr").read_text()


def test_sees_declared_inputs_at_fixed_path(tmp_path: Path) -> None:
    result, out, err = run(tmp_path, "pwd; cat pkg/in.txt", workdir="")
    assert (result.exit_code, result.error) == (0, None), err
    assert out == f"{EXEC_ROOT}\ndeclared input\n"
    result, out, _ = run(tmp_path, "pwd", workdir="pkg")
    assert out == f"{EXEC_ROOT}/pkg\n"


def test_host_tools_work_and_host_root_is_read_only(tmp_path: Path) -> None:
    result, out, err = run(tmp_path, "python3 -c 'print(6*3)'; touch /usr/pbuild-probe; echo $?")
    assert result.exit_code == 0, err
    assert out.splitlines() == ["18", "1"]
    assert "Read-only file system" in err
    assert not os.path.exists("/usr/pbuild-probe")


def test_hidden_paths_are_invisible(tmp_path: Path) -> None:
    secret = Path(__file__).resolve()  # this file: it exists outside the sandbox, not inside
    secret_dir = secret.parent
    hidden_file = REPO / "pyproject.toml"
    assert secret.is_file() and hidden_file.stat().st_size > 0
    result, out, err = run(
        tmp_path,
        f"ls -A {secret_dir} | wc -l; cat {secret}; echo rc=$?; cat {hidden_file} | wc -c",
        hide_paths=(str(secret_dir), str(hidden_file)),
    )
    assert result.exit_code == 0
    lines = out.splitlines()
    assert lines[0] == "0"  # an empty directory where the tests were
    assert "rc=1" in lines  # reading a hidden file fails
    assert lines[-1] == "0"  # a hidden single file reads as empty
    assert "No such file" in err


def test_exec_root_inside_a_hidden_path(tmp_path: Path) -> None:
    """The engine hides its cache dir, which holds the exec roots: the action still sees its own."""
    base = Path(tempfile.mkdtemp(prefix="pbuild-sandbox-", dir="/var/tmp"))
    try:
        cache = base / "cache"
        (cache / "execroot" / "pkg" / "out").mkdir(parents=True)
        (cache / "execroot" / "pkg" / "in.txt").write_text("declared input\n")
        (cache / "secret.txt").write_text("other cache content\n")
        result, out, err = run(
            tmp_path,
            f"cat pkg/in.txt; ls -A {cache} | wc -l; echo made > pkg/out/f",
            exec_root=str(cache / "execroot"),
            hide_paths=(str(cache),),
        )
        assert result.exit_code == 0, err
        assert out.splitlines() == ["declared input", "0"]
        assert (cache / "execroot/pkg/out/f").read_text() == "made\n"
    finally:
        shutil.rmtree(base)


def test_writes_only_to_writable_dirs_and_they_land_on_host(tmp_path: Path) -> None:
    result, _, err = run(
        tmp_path,
        "echo made > pkg/out/result.txt && echo bad > pkg/in.txt; echo bad > pkg/new.txt; "
        "echo ok > /tmp/scratch && cat /tmp/scratch",
    )
    assert result.exit_code == 0
    assert (tmp_path / "execroot/pkg/out/result.txt").read_text() == "made\n"
    assert (tmp_path / "execroot/pkg/in.txt").read_text() == "declared input\n"
    assert not (tmp_path / "execroot/pkg/new.txt").exists()
    assert err.count("Read-only file system") == 2
    assert (tmp_path / "stdout").read_text() == "ok\n"


def test_network_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
            "print(sorted(n for _, n in socket.if_nameindex()))\n"
        )
        result = run_sandboxed(make_request(tmp_path, "python3", "-c", probe))
        assert result.exit_code == 0, (tmp_path / "stderr").read_text()
        out = (tmp_path / "stdout").read_text().splitlines()
        assert out[0].startswith("refused")
        assert out[1] == "['lo']"
        # The same probe with network=True reaches the host's listener.
        result = run_sandboxed(make_request(tmp_path, "python3", "-c", probe, network=True))
        assert (tmp_path / "stdout").read_text().splitlines()[0] == "connected"


def test_pid_namespace_and_hostname(tmp_path: Path) -> None:
    result, out, _ = run(tmp_path, "echo $$; ls /proc | grep -c '^[0-9]'; hostname")
    assert result.exit_code == 0
    pid, count, hostname = out.splitlines()
    assert pid == "2"  # PID 1 is the sandbox's small init
    assert int(count) <= 4  # init, sh, and the ls and grep it started
    assert hostname == "pbuild" != socket.gethostname()


def test_umask_is_fixed(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        result, out, _ = run(tmp_path, "umask; touch pkg/out/f; stat -c %a pkg/out/f")
    finally:
        os.umask(old)
    assert result.exit_code == 0
    assert out.split() == ["0022", "644"]


def test_environment_is_exactly_the_given_one(tmp_path: Path) -> None:
    result = run_sandboxed(make_request(tmp_path, "env", "-0", workdir="pkg"))
    assert result.exit_code == 0
    pairs = [item.split("=", 1) for item in (tmp_path / "stdout").read_text().split("\0") if item]
    assert dict(pairs) == {**ENV, "PWD": f"{EXEC_ROOT}/pkg"}  # PWD: the (fixed) working directory
    assert len(pairs) == len(ENV) + 1


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("/bin/sh", "-c", "exit 3"), 3),
        (("/bin/true",), 0),
        (("python3", "-c", "import ctypes; ctypes.string_at(0)"), 128 + signal.SIGSEGV),
        (("no-such-command-pbuild",), 127),
        (("/bin/sh", "-c", "kill -9 $$; echo survived"), 128 + signal.SIGKILL),
        (("/bin/sh", "-c", "kill -TERM $$; echo survived"), 128 + signal.SIGTERM),
        ((f"{EXEC_ROOT}/pkg/in.txt",), 126),  # exists, not executable
    ],
)
def test_exit_codes_pass_through(tmp_path: Path, argv: tuple[str, ...], code: int) -> None:
    result = run_sandboxed(make_request(tmp_path, *argv))
    assert result.error is None
    assert result.exit_code == code, (tmp_path / "stderr").read_text()


def _processes_with(command: str) -> list[int]:
    """Pids whose argv is exactly ``command`` split on spaces."""
    wanted = b"".join(part.encode() + b"\0" for part in command.split(" "))
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == wanted:
                found.append(int(entry))
    return found


def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    marker = f"{os.getpid() % 1000}.{time.monotonic_ns() % 1000}"
    start = time.monotonic()
    result, _, _ = run(tmp_path, f"sleep 1{marker} & sleep 2{marker}; echo never", timeout_s=0.5)
    assert result.timed_out
    assert result.exit_code == 128 + signal.SIGKILL
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while _processes_with(f"sleep 1{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep 1{marker}") == []


def test_killing_the_caller_kills_the_action(tmp_path: Path) -> None:
    marker = f"3{os.getpid() % 1000}.{time.monotonic_ns() % 1000}"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = {sys.path!r}
        from pbuild.tools.sandbox import SandboxRequest, run_sandboxed
        run_sandboxed(SandboxRequest(argv=("/bin/sh", "-c", "sleep {marker} & sleep {marker}"), env={{"PATH": "/bin"}},
            exec_root={str(tmp_path)!r}, writable_dirs=(), workdir="", hide_paths=(),
            stdout_path="/dev/null", stderr_path="/dev/null"))
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while len(_processes_with(f"sleep {marker}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_processes_with(f"sleep {marker}")) == 2
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 5
    while _processes_with(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep {marker}") == []


def test_concurrent_runs_from_threads(tmp_path: Path) -> None:
    def one(i: int) -> tuple[int, str | None, str]:
        tmp = tmp_path / str(i)
        tmp.mkdir()
        result, _, _ = run(tmp, f"echo {i} > pkg/out/n; cat pkg/out/n")
        return result.exit_code, result.error, (tmp / "execroot/pkg/out/n").read_text()

    started = threading.active_count()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [(0, None, f"{i}\n") for i in range(20)]
    assert threading.active_count() == started


def test_bad_request_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = run_sandboxed(make_request(tmp_path, "/bin/true", writable_dirs=("missing",)))
    assert result.error is not None and "missing" in result.error
    result = run_sandboxed(make_request(tmp_path, "/bin/true", workdir="../escape"))
    assert result.error is not None and "workdir" in result.error


def test_a_symlinked_writable_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    request = make_request(tmp_path, "/bin/sh", "-c", "echo pwned > pkg/link/f")
    (tmp_path / "execroot/pkg/link").symlink_to(outside)
    result = run_sandboxed(dataclasses.replace(request, writable_dirs=("pkg/link",)))
    assert result.error is not None and "symlink" in result.error
    assert list(outside.iterdir()) == []


def test_plan_is_data(tmp_path: Path, backend: str) -> None:
    ops = plan(make_request(tmp_path, "/bin/true")).ops
    assert any(isinstance(op, nsops.PivotRoot) for op in ops)
    assert any(isinstance(op, nsops.Mount) and op.target.endswith(EXEC_ROOT) for op in ops)
    assert nsops.describe(ops).count("\n") == len(ops) - 1


UNPRIVILEGED_PROBE = """
import json, os, sys
from pathlib import Path
from pbuild.tools.sandbox import SandboxRequest, run_sandboxed
tmp, root, last = Path(sys.argv[1]), sys.argv[2] or None, sys.argv[3]
(tmp / "execroot/out").mkdir(parents=True)
(tmp / "execroot/in.txt").write_text("input")
req = SandboxRequest(
    argv=("/bin/sh", "-c", f"id -u; cat in.txt; echo; echo $$; echo w > out/f; echo x > bad; {last}"),
    env={"PATH": "/usr/bin:/bin"}, exec_root=str(tmp / "execroot"), writable_dirs=("out",), workdir="",
    hide_paths=(), stdout_path=str(tmp / "o"), stderr_path=str(tmp / "e"), root=root)
r = run_sandboxed(req)
print(json.dumps({"code": r.exit_code, "error": r.error, "out": (tmp / "o").read_text(),
                  "err": (tmp / "e").read_text(), "written": (tmp / "execroot/out/f").read_text(),
                  "owner": os.stat(tmp / "execroot/out/f").st_uid}))
"""


def test_unprivileged_user(tmp_path: Path) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    # pytest's own base directory is private to root: use a fresh directory nobody can reach.
    with tempfile.TemporaryDirectory(prefix="pbuild-sandbox-") as base:
        work = Path(base)
        os.chown(work, 65534, 65534)
        report = _unprivileged_probe(work, "", "cat /etc/shadow")
    assert report["error"] is None
    assert report["out"].splitlines()[:3] == ["0", "input", "2"]  # uid 0 inside; PID 2 under the init
    assert report["written"] == "w\n"
    assert report["owner"] == 65534
    assert "Read-only file system" in report["err"]
    assert "Permission denied" in report["err"]  # /etc/shadow is still protected
    assert report["code"] != 0


def _unprivileged_probe(work: Path, root: str, last: str = "cat /etc/hostname") -> dict[str, object]:
    """Run UNPRIVILEGED_PROBE as uid 65534 (on ``root``, or the host's with ""); its report."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PBUILD_SANDBOX_BACKEND": os.environ["PBUILD_SANDBOX_BACKEND"],
    }
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            UNPRIVILEGED_PROBE,
            str(work),
            root,
            last,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


# --- actions on a toolchain root --------------------------------------------------------------


@pytest.fixture(scope="module")
def toolchain() -> Iterator[tuple[Path, Path]]:
    """(base, tree): a merged-/usr tree of host programs at ``base/tree``, below /tmp (which the
    fork backend shadows with the new root's tmpfs), and host-only files at ``base/host``: a
    secret, and a program the tree's escaping link points to."""
    base = Path(tempfile.mkdtemp(prefix="pbuild-toolchain-"))
    base.chmod(0o755)  # uid 65534 reads the tree too
    try:
        tree = build_tree(base / "tree")
        (tree / "opt/tc").mkdir(parents=True)
        (tree / "opt/tc/hello").write_text("#!/bin/bash\necho in-tree $0\n")
        (tree / "opt/tc/hello").chmod(0o755)
        (tree / "usr/bin/hello-abs").symlink_to("/opt/tc/hello")  # absent on the host
        (tree / "usr/bin/hello-rel").symlink_to("../../opt/tc/hello")
        (tree / "usr/bin/evil").symlink_to("../../../host/tool")  # base/host/tool, on the host
        (tree / "mnt").symlink_to("opt")  # where the host has a directory
        (tree / "var/lib/dpkg").mkdir(parents=True)  # a /var to open up for a bind below it
        (tree / "var/lib/dpkg/status").write_text("Package: toolchain\n")
        (tree / "usr/bin/hostpy").symlink_to(os.path.realpath(shutil.which("python3") or "/usr/bin/python3"))
        (base / "host").mkdir()
        (base / "host/secret.txt").write_text("host secret\n")
        (base / "host/tool").write_text("#!/bin/sh\necho HOST\n")
        (base / "host/tool").chmod(0o755)
        yield base, tree
    finally:
        shutil.rmtree(base)


def test_action_on_a_toolchain_root_sees_the_tree_not_the_host(
    tmp_path: Path, toolchain: tuple[Path, Path]
) -> None:
    base, tree = toolchain
    script = (
        f"cat /etc/hostname; cat pkg/in.txt; ls /; cat {base}/host/secret.txt; echo rc=$?; "
        f"ls {REPO} >/dev/null 2>&1; echo repo=$?; "
        "echo made > pkg/out/result.txt; touch /probe /usr/probe /etc/probe 2>&1 | grep -c Read-only"
    )
    result, out, err = run(tmp_path, script, root=str(tree))
    assert (result.exit_code, result.error) == (0, None), err
    lines = out.splitlines()
    assert lines[:2] == ["toolchain-tree", "declared input"]
    assert lines[2:16] == sorted(
        [
            "bin",
            "dev",
            "etc",
            "execroot",
            "lib",
            "lib64",
            "mnt",
            "opt",
            "proc",
            "run",
            "sbin",
            "tmp",
            "usr",
            "var",
        ]
    )
    assert lines[16:] == ["rc=1", "repo=2", "3"]
    assert "No such file" in err
    assert (tmp_path / "execroot/pkg/out/result.txt").read_text() == "made\n"
    assert not (tree / "probe").exists() and not (tree / "usr/probe").exists()


def test_toolchain_root_resolves_links_inside_the_tree(tmp_path: Path, toolchain: tuple[Path, Path]) -> None:
    _, tree = toolchain
    for name in ("hello-abs", "hello-rel"):
        result = run_sandboxed(make_request(tmp_path, name, root=str(tree)))
        assert (result.exit_code, result.error) == (0, None), (tmp_path / "stderr").read_text()
        assert (tmp_path / "stdout").read_text() == f"in-tree /usr/bin/{name}\n"
    result = run_sandboxed(make_request(tmp_path, "cat", "pkg/in.txt", root=str(tree)))
    assert (tmp_path / "stdout").read_text() == "declared input\n"


@pytest.mark.parametrize("name", ["evil", "hostpy", "jq"])
def test_a_program_the_toolchain_lacks_is_not_taken_from_the_host(
    tmp_path: Path, toolchain: tuple[Path, Path], name: str
) -> None:
    """``evil`` escapes the tree with ``../../..`` and ``hostpy`` is an absolute link to the
    host's python3: on the root both lead nowhere, as ``jq``, which is nowhere at all."""
    _, tree = toolchain
    result = run_sandboxed(make_request(tmp_path, name, root=str(tree)))
    err = (tmp_path / "stderr").read_text()
    assert (result.exit_code, result.error) == (127, None), err
    assert (tmp_path / "stdout").read_text() == ""
    assert err == f"pbuild-sandbox: {name}: {NOT_IN_TOOLCHAIN}\n"
    assert missing_from_toolchain(err, result.exit_code) == name
    # The same program run from the action's own shell script.
    result, out, err = run(tmp_path, f"{name} --version; cat /usr/bin/{name}", root=str(tree))
    assert result.exit_code == 1 and "HOST" not in out and out == ""
    result, out, err = run(tmp_path, f"{name} --version", root=str(tree))
    assert result.exit_code == 127
    assert missing_from_toolchain(err, result.exit_code) == name


def test_missing_command_on_the_host_root_keeps_its_message(tmp_path: Path) -> None:
    result = run_sandboxed(make_request(tmp_path, "no-such-command-pbuild"))
    err = (tmp_path / "stderr").read_text()
    assert (result.exit_code, err) == (127, "pbuild-sandbox: no-such-command-pbuild: command not found\n")
    assert missing_from_toolchain("sh: 1: jq: not found\n", 127) == "jq"
    assert missing_from_toolchain("sh: 1: jq: not found\n", 1) is None


def test_unprivileged_user_on_a_toolchain_root(toolchain: tuple[Path, Path]) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    _, tree = toolchain
    with tempfile.TemporaryDirectory(prefix="pbuild-sandbox-") as base:
        work = Path(base)
        os.chown(work, 65534, 65534)
        report = _unprivileged_probe(work, str(tree))
    assert report["code"] == 0, report
    assert report["out"].splitlines() == ["0", "input", "2", "toolchain-tree"]
    assert report["written"] == "w\n"
    assert report["owner"] == 65534
    assert "Read-only file system" in report["err"]


# --- exec_on_root: a program on a toolchain root, as `pbuild run` starts it ---------------------

RUN_PROBE = """
import os, sys
from pbuild.tools.sandbox import exec_on_root
root, work, *argv = sys.argv[1:]
exec_on_root(root, argv, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, binds=[work], cwd=os.path.join(work, "sub"))
"""

RUN_SCRIPT = (
    "pwd; cat data.txt; echo written > ../result.txt; id -u; id -g; cat /etc/hostname; "
    "cat /var/lib/dpkg/status; ls {secret} 2>/dev/null; echo secret=$?; "
    "touch /usr/probe 2>/dev/null; echo ro=$?; echo scratch > /tmp/x && cat /tmp/x; exit 7"
)


def _exec_on_root(
    tree: Path, work: Path, *argv: str, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PBUILD_SANDBOX_BACKEND": os.environ["PBUILD_SANDBOX_BACKEND"],
    }
    return subprocess.run(
        [*prefix, sys.executable, "-c", RUN_PROBE, str(tree), str(work), *argv],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("user", [None, 65534])
def test_exec_on_root_runs_a_program_of_the_tree(toolchain: tuple[Path, Path], user: int | None) -> None:
    """The program sees the tree as /, its working directory in the bound workspace (below
    /var/tmp, a directory the tree has too: /var is laid out entry by entry around the bind), its
    caller's uid and gid, and passes its exit code through."""
    if user is not None and not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    base, tree = toolchain
    work = Path(tempfile.mkdtemp(prefix="pbuild-run-", dir="/var/tmp"))
    try:
        (work / "sub").mkdir()
        (work / "sub/data.txt").write_text("from the workspace\n")
        uid = os.getuid() if user is None else user
        os.chown(work, uid, uid)
        os.chown(work / "sub", uid, uid)
        proc = _exec_on_root(tree, work, "bash", "-c", RUN_SCRIPT.format(secret=base / "host"), user=user)
        assert proc.returncode == 7, proc.stderr
        assert proc.stdout.splitlines() == [
            f"{work}/sub",
            "from the workspace",
            str(uid),
            str(uid),
            "toolchain-tree",
            "Package: toolchain",
            "secret=2",
            "ro=1",
            "scratch",
        ]
        assert (work / "result.txt").read_text() == "written\n"
        assert (work / "result.txt").stat().st_uid == uid
        assert not (tree / "usr/probe").exists()
        proc = _exec_on_root(tree, work, "evil", user=user)
        assert (proc.returncode, proc.stdout) == (127, "")
        assert proc.stderr == f"pbuild-sandbox: evil: {NOT_IN_TOOLCHAIN}\n"
        proc = _exec_on_root(tree, work, "hello-abs", user=user)
        assert (proc.returncode, proc.stdout) == (0, "in-tree /usr/bin/hello-abs\n"), proc.stderr
    finally:
        shutil.rmtree(work)


def test_exec_on_root_refuses_a_bind_through_a_link_of_the_tree(toolchain: tuple[Path, Path]) -> None:
    """The host's /mnt is a directory, the tree's a link: binding there would follow the link.
    Run in a child: were it not refused, exec_on_root would replace the test process."""
    _, tree = toolchain
    probe = (
        "import sys\n"
        "from pbuild.tools.sandbox import SandboxRequestError, exec_on_root\n"
        "try:\n"
        "    exec_on_root(sys.argv[1], ['true'], {}, binds=['/mnt'], cwd='/')\n"
        "except SandboxRequestError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", probe, str(tree)], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout) == (3, "cannot bind /mnt: /mnt is a link in the root\n"), (
        proc.stderr
    )


def test_exec_on_root_shares_the_terminal(toolchain: tuple[Path, Path]) -> None:
    """A run is interactive: on a pseudo-terminal, the program's stdin is that terminal and
    /dev/tty opens (the host's /dev, not the actions' minimal one)."""
    _, tree = toolchain
    with tempfile.TemporaryDirectory(prefix="pbuild-run-") as work:
        (Path(work) / "sub").mkdir()
        script = "[ -t 0 ] && echo stdin-is-tty; echo via-dev-tty > /dev/tty; exit 4"
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PBUILD_SANDBOX_BACKEND": os.environ["PBUILD_SANDBOX_BACKEND"],
        }
        pid, terminal = pty.fork()
        if pid == 0:  # pragma: no cover - the child execs at once
            os.execve(
                sys.executable, [sys.executable, "-c", RUN_PROBE, str(tree), work, "bash", "-c", script], env
            )
        output = b""
        with contextlib.suppress(OSError):  # EIO once the program closed the terminal
            while chunk := os.read(terminal, 4096):
                output += chunk
        os.close(terminal)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 4, output
    assert output.replace(b"\r\n", b"\n") == b"stdin-is-tty\nvia-dev-tty\n"
