"""The container's seccomp filter end to end: real namespaces, a real busybox image and the real
//app:image (python3 with ctypes makes the raw syscalls busybox has no applet for)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace
from tests.support.launcher import launch, run_ok
from tests.support.launcher_users import run_script_as_nobody
from tests.support.runner import Runner

UNCONFINED = ("--security-opt", "seccomp=unconfined")


def facts(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# What a container may do to the kernel's shared state, in busybox: a new user namespace, a
# mount in a new user+mount namespace (both allowed to unprivileged processes by this kernel,
# so only the filter can refuse them), and a plain mount (which needs CAP_SYS_ADMIN too).
PROBE = r"""
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | tr -d '[:space:]' | cut -d: -f2)"
echo "init=$(grep '^Seccomp:' /proc/1/status | tr -d '[:space:]' | cut -d: -f2)"
echo "capeff=$(grep '^CapEff:' /proc/self/status | tr -d '[:space:]' | cut -d: -f2)"
echo "userns_err=$(unshare -U true 2>&1)"
unshare -U true 2>/dev/null; echo "userns=$?"
unshare -Urm sh -c 'mount -t tmpfs none /mnt' 2>/dev/null; echo "nested_mount=$?"
mount -t tmpfs none /mnt 2>/dev/null; echo "mount=$?"
echo "ordinary=$(echo a b c | tr ' ' '\n' | sort -r | head -1)"
"""


def test_default_filter_refuses_namespaces_and_mounts(env: dict[str, str], image: str) -> None:
    got = facts(run_ok(env, "run", "--rm", image, "--", "sh", "-c", PROBE))
    assert got["seccomp"] == "2"  # SECCOMP_MODE_FILTER
    assert got["userns"] == "1" and "Operation not permitted" in got["userns_err"]
    assert got["nested_mount"] == "1"
    assert got["mount"] != "0"
    assert got["ordinary"] == "c"  # pipes, forks and execs of ordinary programs still work


def test_unconfined_lifts_the_filter(env: dict[str, str], image: str) -> None:
    got = facts(run_ok(env, "run", "--rm", *UNCONFINED, image, "--", "sh", "-c", PROBE))
    assert got["seccomp"] == "0"
    assert got["userns"] == "0" and got["nested_mount"] == "0"
    assert got["mount"] != "0"  # still no CAP_SYS_ADMIN: the kernel refuses it itself


def test_cap_add_sys_admin_allows_namespaces_and_mounts(env: dict[str, str], image: str) -> None:
    got = facts(run_ok(env, "run", "--rm", "--cap-add", "SYS_ADMIN", image, "--", "sh", "-c", PROBE))
    assert got["seccomp"] == "2"  # still filtered, with the rules CAP_SYS_ADMIN opens
    assert int(got["capeff"], 16) & (1 << 21)
    assert got["userns"] == "0" and got["nested_mount"] == "0" and got["mount"] == "0"
    dropped = facts(run_ok(env, "run", "--rm", "--cap-drop", "ALL", image, "--", "sh", "-c", PROBE))
    assert dropped["capeff"] == "0000000000000000" and dropped["userns"] == "1"


def test_init_and_exec_are_filtered(env: dict[str, str], image: str) -> None:
    got = facts(run_ok(env, "run", "--rm", "--init", image, "--", "sh", "-c", PROBE))
    assert got["seccomp"] == "2" and got["init"] == "2" and got["userns"] == "1"
    for flags, expected in (((), "2"), (UNCONFINED, "0")):
        name = f"sc-exec-{expected}"
        run_ok(env, "run", "-d", "--name", name, *flags, image, "--", "sleep", "60")
        try:
            inside = facts(run_ok(env, "exec", name, "sh", "-c", PROBE))
            assert inside["seccomp"] == expected
            assert inside["userns"] == ("1" if expected == "2" else "0")
        finally:
            launch(env, "rm", "-f", name)


def test_profile_file_in_dockers_format(env: dict[str, str], image: str, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                    {"name": "chmod", "action": "SCMP_ACT_ERRNO"},  # the pre-17.04 layout
                    {"name": "fchmodat", "action": "SCMP_ACT_ERRNO"},
                ],
            }
        )
    )
    out = run_ok(env, "run", "--rm", "--security-opt", f"seccomp={profile}", image, "--", "sh", "-c",
                 "grep '^Seccomp:' /proc/self/status; mkdir /tmp/d 2>&1; touch /tmp/f; chmod 600 /tmp/f 2>&1; "
                 "unshare -U true && echo userns")  # fmt: skip
    assert "Seccomp:\t2" in out
    assert "Permission denied" in out  # errnoRet 13 = EACCES
    assert "Operation not permitted" in out  # chmod: EPERM when errnoRet is not given
    assert "userns" in out.splitlines()  # allowed by this profile's default


def test_printed_default_profile_is_the_default(env: dict[str, str], image: str, tmp_path: Path) -> None:
    """``python -m pbuild.tools.launcher.seccomp_default`` gives a file that filters the same."""
    profile = tmp_path / "default.json"
    printed = subprocess.run([sys.executable, "-m", "pbuild.tools.launcher.seccomp_default"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    profile.write_text(printed)
    got = facts(
        run_ok(env, "run", "--rm", "--security-opt", f"seccomp={profile}", image, "--", "sh", "-c", PROBE)
    )
    assert got["seccomp"] == "2" and got["userns"] == "1"
    from pbuild.tools.launcher import identity, seccomp

    caps = identity.capability_names(identity.DEFAULT_CAP_MASK)
    from_file = seccomp.build_program(seccomp.choose_policy(("seccomp=" + str(profile),)), caps)
    assert from_file == seccomp.build_program(seccomp.choose_policy(()), caps)
    with_admin = identity.capability_names(identity.capability_mask(("sys_admin",)))
    assert seccomp.build_program(seccomp.choose_policy(()), with_admin) != from_file


def test_bad_profiles_and_options_are_messages(env: dict[str, str], image: str, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n  "defaultAction": "SCMP_ACT_ERRNO",\n  "syscalls": [,]\n}\n')
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_DENY",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 7, "value": 1, "op": "SCMP_CMP_EQ"}]},
            {"action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_NOTIFY", "includes": {"minKernel": "new"}},
        ],
    }))  # fmt: skip
    cases = [
        (("--security-opt", f"seccomp={tmp_path / 'missing.json'}"), ["cannot read seccomp profile", "missing.json"]),
        (("--security-opt", f"seccomp={bad_json}"), [f"{bad_json}:3:16", "invalid JSON"]),
        (("--security-opt", f"seccomp={wrong}"), [
            "defaultAction: unknown action 'SCMP_ACT_DENY'", "syscalls[0].args[0].index",
            "syscalls[1]: names is missing", "syscalls[2].action: unknown action 'SCMP_ACT_NOTIFY'",
            "needs a listener", "syscalls[2].includes.minKernel"]),
        (("--security-opt", "apparmor=unconfined"), ["--security-opt 'apparmor=unconfined' is not supported"]),
        (("--cap-add", "SYS_BOGUS"), ["--cap-add: unknown capability SYS_BOGUS"]),
    ]  # fmt: skip
    for flags, fragments in cases:
        result = launch(env, "run", "--rm", *flags, image, "--", "true")
        assert result.returncode == 125, (flags, result.stderr)
        for fragment in fragments:
            assert fragment in result.stderr, (flags, fragment, result.stderr)
        assert "Traceback" not in result.stderr
    assert not list(Path(env["PBUILD_RUNTIME_DIR"]).glob("containers/*"))  # nothing half made


def test_cached_filters_are_trusted_only_in_a_private_directory(env: dict[str, str], image: str) -> None:
    """Built filters are kept in the runtime directory; one that someone else could have written
    must not become a container's filter."""
    userns = ("--", "sh", "-c", "unshare -U true 2>/dev/null; echo userns=$?")
    assert facts(run_ok(env, "run", "--rm", image, *userns))["userns"] == "1"
    cache = Path(env["PBUILD_RUNTIME_DIR"]) / "seccomp"
    (entry,) = cache.iterdir()
    assert cache.stat().st_mode & 0o777 == 0o700
    from pbuild.tools.launcher import seccomp

    allow_all = seccomp.Policy("test", {"defaultAction": "SCMP_ACT_ALLOW"})
    header, _, _ = entry.read_bytes().partition(b"\n")
    entry.write_bytes(header + b"\n" + seccomp.build_program(allow_all, frozenset()))
    # The planted program is used while the directory is private (it is the caller's own cache)...
    assert facts(run_ok(env, "run", "--rm", image, *userns))["userns"] == "0"
    # ...but not once others may write there, nor when its header is not this container's.
    cache.chmod(0o777)
    assert facts(run_ok(env, "run", "--rm", image, *userns))["userns"] == "1"
    cache.chmod(0o700)
    entry.write_bytes(
        header.replace(b"CAP_CHOWN", b"CAP_XHOWN") + b"\n" + seccomp.build_program(allow_all, frozenset())
    )
    assert facts(run_ok(env, "run", "--rm", image, *userns))["userns"] == "1"


def _libseccomp_path() -> str:
    ctypes.CDLL("libseccomp.so.2")
    with open("/proc/self/maps") as f:
        return next(line.split()[-1] for line in f if "libseccomp.so" in line)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="hides a library with a bind mount"
)
def test_missing_libseccomp_is_refused_not_ignored(env: dict[str, str], image: str) -> None:
    # A private mount namespace where libseccomp is an empty file: dlopen fails as if it were absent.
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind /dev/null "{_libseccomp_path()}" && exec "$0" "$@"')  # fmt: skip
    result = launch(env, "run", "--rm", image, "--", "echo", "ran", prefix=hide)
    assert result.returncode == 125 and "ran" not in result.stdout, result
    assert "needs libseccomp" in result.stderr and "libseccomp2" in result.stderr
    assert "--security-opt seccomp=unconfined" in result.stderr and "Traceback" not in result.stderr
    unconfined = launch(env, "run", "--rm", *UNCONFINED, image, "--", "echo", "ran", prefix=hide)
    assert unconfined.returncode == 0 and unconfined.stdout == "ran\n", unconfined


UNPRIVILEGED = r"""
import json, os, sys, tempfile
from pbuild.tools.launcher import main
image, probe = sys.argv[1], sys.argv[2]
def run(*args):
    out = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        code = main(list(args))
        sys.stdout.flush()
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out.seek(0)
    return {"code": code, "out": out.read().decode()}
print(json.dumps({
    "default": run("run", "--rm", image, "--", "sh", "-c", probe),
    "unconfined": run("run", "--rm", "--security-opt", "seccomp=unconfined", image, "--", "sh", "-c", probe),
}))
"""


@pytest.mark.slow
def test_unprivileged_user(image: str) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    with tempfile.TemporaryDirectory(prefix="pbuild-seccomp-") as base:
        home = Path(base)
        layout = home / "image"
        shutil.copytree(image.removeprefix("oci:"), layout)
        proc = run_script_as_nobody(home, UNPRIVILEGED, f"oci:{layout}", PROBE)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["default"]["code"] == 0, report
        default, unconfined = facts(report["default"]["out"]), facts(report["unconfined"]["out"])
        assert default["seccomp"] == "2" and default["userns"] == "1" and default["nested_mount"] == "1"
        assert (
            unconfined["seccomp"] == "0" and unconfined["userns"] == "0" and unconfined["nested_mount"] == "0"
        )
        cached = list((home / "run" / "seccomp").iterdir())
        assert cached and all(p.stat().st_uid == 65534 for p in cached)


# //app:image: its python3 makes the raw syscalls; the numbers come from this host's libseccomp
# so the test knows none itself. The errors tell who refused: EPERM is the filter, while the
# kernel answers these bad arguments with EOPNOTSUPP, EFAULT and EINVAL.
KERNEL_PROBE = r"""
import ctypes, json, os, subprocess, sys, threading
numbers = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.personality.argtypes = [ctypes.c_ulong]
def call(name, *args):
    result = libc.syscall(ctypes.c_long(numbers[name]), *(ctypes.c_long(a) for a in args))
    return "ok" if result >= 0 else os.strerror(ctypes.get_errno())
got = {
    "keyctl": call("keyctl", 0x7FFF),
    "add_key": call("add_key", 0, 0, 0, 0, 0),
    "bpf": call("bpf", 0x7FFF, 0, 0),
    "perf_event_open": call("perf_event_open", 0, 0, -1, -1, 0),
    "unshare": call("unshare", 0x10000000),
    # Arguments: personality may only query or pick Linux; socket not AF_ALG (38).
    "personality_query": "ok" if libc.personality(0xFFFFFFFF) >= 0 else os.strerror(ctypes.get_errno()),
    "personality_no_aslr": "ok" if libc.personality(0x0040000) >= 0 else os.strerror(ctypes.get_errno()),
    "af_alg": "refused" if libc.socket(38, 5, 0) < 0 and ctypes.get_errno() == 1 else "not refused",
    "af_unix": "ok" if libc.socket(1, 1, 0) >= 0 else os.strerror(ctypes.get_errno()),
    "seccomp": [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0],
}
import numpy  # ordinary work: a C extension, a thread (clone3 -> ENOSYS -> clone), a child process
box = []
thread = threading.Thread(target=lambda: box.append(int(numpy.arange(4).sum())))
thread.start()
thread.join()
got["numpy_in_thread"] = box[0]
got["child"] = subprocess.run([sys.executable, "-c", "print(6 * 3)"], capture_output=True, text=True).stdout.strip()
print(json.dumps(got))
"""
REFUSED = "Operation not permitted"
KERNEL = {"keyctl": "Operation not supported", "add_key": "Bad address", "bpf": "Invalid argument",
          "perf_event_open": "Bad address", "unshare": "ok"}  # fmt: skip


@pytest.fixture(scope="module")
def app_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("app")
    ws = clone_app_workspace(tmp / "clone")
    built = Runner(tmp)("build", "//app:image", cwd=ws, timeout=600)
    assert built.code == 0, built
    return f"oci:{ws / 'pbuild-out/app/image/oci'}"


def _numbers() -> str:
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return json.dumps({name: lib.seccomp_syscall_resolve_name(name.encode()) for name in KERNEL})


@pytest.mark.slow
def test_app_image_kernel_interfaces(env: dict[str, str], app_image: str) -> None:
    assert run_ok(env, "run", "--rm", app_image) == "18\n"
    python = ("--entrypoint", "/usr/bin/python3.11")
    args = ("--", "-c", KERNEL_PROBE, _numbers())
    runs = {
        "default": json.loads(run_ok(env, "run", "--rm", *python, app_image, *args)),
        "unconfined": json.loads(run_ok(env, "run", "--rm", *UNCONFINED, *python, app_image, *args)),
        "sys_admin": json.loads(
            run_ok(env, "run", "--rm", "--cap-add", "SYS_ADMIN", *python, app_image, *args)
        ),
    }
    for got in runs.values():
        assert got["numpy_in_thread"] == 6 and got["child"] == "18", got
    assert runs["default"]["seccomp"] == "2"
    assert {k: runs["default"][k] for k in KERNEL} == dict.fromkeys(KERNEL, REFUSED)
    assert runs["unconfined"]["seccomp"] == "0"
    assert {k: runs["unconfined"][k] for k in KERNEL} == KERNEL
    arguments = ("personality_query", "personality_no_aslr", "af_alg", "af_unix")
    assert [runs["default"][k] for k in arguments] == ["ok", REFUSED, "refused", "ok"]
    assert [runs["unconfined"][k] for k in arguments] == ["ok", "ok", "not refused", "ok"]
    # CAP_SYS_ADMIN opens bpf, perf_event_open and unshare, as in Docker; keyrings stay closed.
    assert {k: runs["sys_admin"][k] for k in KERNEL} == {**KERNEL, "keyctl": REFUSED, "add_key": REFUSED}
