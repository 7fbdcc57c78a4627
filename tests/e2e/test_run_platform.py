"""`pbuild run --platform linux/arm64` on this machine: a real arm64 busybox (the Debian archive's
``busybox-static`` arm64 package) runs under qemu-user-static through the host's binfmt_misc
handler, in the launcher's namespaces and under its seccomp filter; and the messages when it
cannot (an index without the platform, binfmt_misc unmounted or a handler without the F flag, the
last two shown in a private mount namespace over the real path)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.foreignimages import fetch_arm64_busybox, make_two_platform_busybox, write_multiplatform
from tests.support.launcher import launch, run_ok
from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.runner import PBUILD, Result

BINFMT = "/proc/sys/fs/binfmt_misc"


@pytest.fixture(scope="session")
def arm64_busybox(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The arm64 busybox binary, its .deb fetched once per test session."""
    return fetch_arm64_busybox(tmp_path_factory.mktemp("debs"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, arm64_busybox: bytes) -> Path:
    """``multi`` (the two-platform index), ``amd64`` and ``arm64`` (one image each) below it."""
    base = tmp_path_factory.mktemp("platforms")
    make_two_platform_busybox(base, arm64_busybox)
    return base


@pytest.fixture(scope="module")
def emulation() -> None:
    """Skip where this machine cannot run aarch64 programs in a container (.ci/install sets it up)."""
    from pbuild.tools.launcher import binfmt

    found = binfmt.check("aarch64")
    if found.problem is not None:
        # As root, .ci/install registers the handler: its absence there is a failure, not a skip.
        (pytest.fail if os.geteuid() == 0 else pytest.skip)(f"no aarch64 emulation here: {found.problem}")


@pytest.fixture(params=USERS)
def user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    with user_folder(request.param) as folder:
        yield folder


def pbuild_as(user: LauncherUser, *args: str, timeout: float = 120) -> Result:
    proc = subprocess.run([*user.prefix(), *PBUILD, *args], cwd=user.base, env=user.env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr, args)


def facts(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_each_platform_of_an_index_runs_its_own_programs(user: LauncherUser, images: Path, emulation: None) -> None:
    layout = user.base / "multi"
    shutil.copytree(images / "multi", layout)
    user.give(layout)
    for flags, machine in ((["--platform", "linux/arm64"], "aarch64"), (["--platform=linux/arm64/v8"], "aarch64"),
                           (["--platform", "linux/amd64"], "x86_64"), ([], "x86_64")):
        result = pbuild_as(user, "run", "--rm", *flags, f"oci:{layout}", "busybox", "uname", "-m")
        assert result.code == 0 and result.out == f"{machine}\n", (user.name, flags, str(result))


def test_an_emulated_command_is_not_pid_1_and_dies_of_its_own_signal(env: dict[str, str], images: Path,
                                                                     emulation: None) -> None:
    """qemu ends a program killed by a signal by sending the signal to itself, which the kernel
    ignores for a PID namespace's init: the launcher's init is PID 1 instead, so this ends (143)."""
    started = time.monotonic()
    result = launch(env, "run", "--rm", "--platform", "linux/arm64", f"oci:{images / 'multi'}", "sh", "-c",
                    "echo pid=$$; kill -TERM $$; echo after", timeout=60)
    assert result.returncode == 143, result
    assert facts(result.stdout)["pid"] != "1" and "after" not in result.stdout, result.stdout
    assert time.monotonic() - started < 30
    # a program that exits on its own keeps its code
    quiet = launch(env, "run", "--rm", "--platform", "linux/arm64", f"oci:{images / 'multi'}", "sh", "-c", "exit 7")
    assert quiet.returncode == 7, quiet


# The default filter (seccomp.py) as test_launcher_seccomp.py probes it: qemu makes the host's
# (x86_64) syscalls for the arm64 program, so the filter's architecture check holds and its rules apply.
PROBE = r"""
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | tr -d '[:space:]' | cut -d: -f2)"
echo "userns_err=$(unshare -U true 2>&1)"
unshare -U true 2>/dev/null; echo "userns=$?"
mount -t tmpfs none /tmp 2>/dev/null; echo "mount=$?"
echo "ordinary=$(echo a b c | tr ' ' '\n' | sort -r | head -1)"
echo "machine=$(uname -m)"
"""


def test_the_filter_and_the_namespaces_hold_under_emulation(env: dict[str, str], images: Path, tmp_path: Path,
                                                            emulation: None) -> None:
    image = f"oci:{images / 'multi'}"
    got = facts(run_ok(env, "run", "--rm", "--platform", "linux/arm64", image, "sh", "-c", PROBE))
    assert got["machine"] == "aarch64" and got["seccomp"] == "2", got
    assert got["userns"] == "1" and "Operation not permitted" in got["userns_err"], got
    assert got["mount"] != "0" and got["ordinary"] == "c", got
    profile = tmp_path / "profile.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": '
                       '[{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}')
    out = run_ok(env, "run", "--rm", "--security-opt", f"seccomp={profile}", "--platform", "linux/arm64", image,
                 "sh", "-c", "mkdir /tmp/d 2>&1; unshare -U true 2>&1; uname -m")
    assert "Permission denied" in out and "aarch64" in out.splitlines(), out  # errnoRet 13 = EACCES
    # allowed by this profile, refused by the kernel: qemu runs a second thread, and a threaded
    # process gets no new user namespace (EINVAL; docs/launcher.md says so)
    assert "Invalid argument" in out, out
    # its own PID (a handful of processes, not the host's), UTS and network namespaces, as natively
    out = run_ok(env, "run", "--rm", "--platform", "linux/arm64", "--hostname", "armbox", image, "sh", "-c",
                 "echo host=$(cat /proc/sys/kernel/hostname); echo procs=$(ls /proc | grep -c '^[0-9]');"
                 "echo net=$(ls /sys/class/net | tr '\\n' ' ')")
    got = facts(out)
    assert got["host"] == "armbox" and int(got["procs"]) < 10 and got["net"].split() == ["lo"], got


def test_exec_into_an_emulated_container(env: dict[str, str], images: Path, emulation: None) -> None:
    name = "emulated-exec"
    run_ok(env, "run", "-d", "--name", name, "--platform", "linux/arm64", f"oci:{images / 'multi'}", "sleep", "60")
    try:
        assert run_ok(env, "exec", name, "uname", "-m") == "aarch64\n"
        assert run_ok(env, "exec", name, "sh", "-c", "echo $((6 * 7))") == "42\n"
        started = time.monotonic()
        run_ok(env, "stop", name)
        assert time.monotonic() - started < 8  # the init passes SIGTERM on; no wait for SIGKILL
    finally:
        launch(env, "rm", "-f", name)


def test_an_arm64_only_image_runs_without_platform(env: dict[str, str], images: Path, tmp_path: Path,
                                                   emulation: None) -> None:
    """An image whose config says arm64 (a docker archive holds one platform) runs emulated;
    asking for another platform names the image's own."""
    archive = tmp_path / "arm64.tar"
    subprocess.run(["skopeo", "copy", f"oci:{images / 'arm64'}:latest", f"docker-archive:{archive}:bb:arm64"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    assert run_ok(env, "run", "--rm", f"docker-archive:{archive}", "uname", "-m") == "aarch64\n"
    refused = launch(env, "run", "--rm", "--platform", "linux/amd64", f"docker-archive:{archive}", "uname", "-m")
    assert refused.returncode == 125, refused
    assert f"docker-archive:{archive} is a linux/arm64 image, not linux/amd64" in refused.stderr
    assert "use --platform linux/arm64 or leave --platform out" in refused.stderr


def test_an_index_without_the_platform_lists_the_ones_it_has(env: dict[str, str], images: Path, tmp_path: Path,
                                                             emulation: None) -> None:
    layout = write_multiplatform(tmp_path / "only-amd64", {"linux/amd64": images / "amd64"})
    refused = launch(env, "run", "--rm", "--platform", "linux/arm64", f"oci:{layout}", "uname", "-m")
    assert refused.returncode == 125, refused
    assert f"oci:{layout} has no image for linux/arm64: its index holds linux/amd64" in refused.stderr, refused
    assert "--platform linux/amd64" in refused.stderr and "Traceback" not in refused.stderr
    arm_only = write_multiplatform(tmp_path / "only-arm64", {"linux/arm64": images / "arm64"})
    refused = launch(env, "run", "--rm", f"oci:{arm_only}", "uname", "-m")
    assert refused.returncode == 125 and "has no image for linux/amd64: its index holds linux/arm64" in refused.stderr
    assert run_ok(env, "run", "--rm", "--platform", "linux/arm64", f"oci:{arm_only}", "uname", "-m") == "aarch64\n"


def _in_private_binfmt(env: dict[str, str], setup: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The launcher in a mount namespace of its own whose binfmt_misc folder ``setup`` (shell) changed."""
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "pbuild.tools.launcher", *args))
    return subprocess.run(["unshare", "-m", "sh", "-c", f"set -e; {setup}; exec {command}"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_the_messages_when_this_machine_cannot_emulate(env: dict[str, str], images: Path, emulation: None) -> None:
    """Real conditions in a private mount namespace (the host's binfmt_misc is left alone): not
    mounted; then a folder of the kernel's format with a handler lacking the F flag; nothing runs."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) for a mount namespace of its own")
    run = ("run", "--rm", "--platform", "linux/arm64", f"oci:{images / 'multi'}", "uname", "-m")
    unmounted = _in_private_binfmt(env, f"umount {BINFMT}", *run)
    assert unmounted.returncode == 125 and unmounted.stdout == "", unmounted
    assert (f"--platform linux/arm64: this machine (linux/amd64) can run linux/arm64 containers only under "
            f"emulation, and binfmt_misc is not mounted at {BINFMT}") in unmounted.stderr
    for line in ("apt-get install qemu-user-static", f"mount -t binfmt_misc binfmt_misc {BINFMT}",
                 f"> {BINFMT}/register"):
        assert line in unmounted.stderr, unmounted.stderr
    # exec into a running emulated container checks again
    run_ok(env, "run", "-d", "--name", "emulated-gone", "--platform", "linux/arm64", f"oci:{images / 'multi'}",
           "sleep", "60")
    try:
        gone = _in_private_binfmt(env, f"umount {BINFMT}", "exec", "emulated-gone", "uname", "-m")
        assert gone.returncode == 125 and gone.stdout == "", gone
        assert "container emulated-gone holds linux/arm64 programs: this machine" in gone.stderr, gone.stderr
        assert run_ok(env, "exec", "emulated-gone", "uname", "-m") == "aarch64\n"
    finally:
        launch(env, "rm", "-f", "emulated-gone")
    real = Path(BINFMT, "qemu-aarch64").read_text() if Path(BINFMT, "qemu-aarch64").exists() else None
    if real is None:
        pytest.skip("the handler is not named qemu-aarch64 here")
    unfixed = re.sub(r"^flags: (\S*)$", lambda m: "flags: " + m.group(1).replace("F", ""), real, flags=re.M)
    setup = (f"umount {BINFMT}; mount -t tmpfs none {BINFMT}; echo enabled > {BINFMT}/status; "
             f"printf '%s' {shlex.quote(unfixed)} > {BINFMT}/qemu-aarch64")
    result = _in_private_binfmt(env, setup, *run)
    assert result.returncode == 125 and result.stdout == "", result
    assert "the binfmt_misc handler qemu-aarch64 (" in result.stderr and "lacks the F flag" in result.stderr, result
    assert f"echo -1 > {BINFMT}/qemu-aarch64" in result.stderr, result.stderr
    assert re.search(r":P?F' > " + re.escape(f"{BINFMT}/register"), result.stderr), result.stderr
