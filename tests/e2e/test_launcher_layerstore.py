"""The layer store and the container state on disk: private (setuid files of images out of other
users' reach), and cleaned after a killed launcher without disturbing one still at work."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launcher_users import NOBODY, USERS, LauncherUser, user_folder
from tests.support.testimages import (
    BASE_CONFIG,
    busybox_layer,
    directory,
    file,
    make_busybox_image,
    tar_layer,
    write_oci,
)


@pytest.fixture(params=USERS)
def launcher_user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    """Run the test as root, then as uid 65534."""
    with user_folder(request.param) as user:
        yield user


SUID_LAYER = [directory("sbin"), file("sbin/suid-tool", "#!/bin/sh\necho tool\n", 0o4755)]


def layer_files(store: Path, name: str) -> list[Path]:
    return sorted(store.glob(f"sha256/*/{name}"))


def reachable_by_nobody(path: Path) -> bool:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "test", "-e",
                           str(path)], check=False).returncode == 0  # fmt: skip


def test_store_and_state_are_private_and_old_ones_tightened(launcher_user: LauncherUser) -> None:
    user = launcher_user
    layout = make_busybox_image(user.base / "img", [tar_layer(SUID_LAYER)])
    runtime = Path(user.env["PBUILD_RUNTIME_DIR"])
    for old in (user.store, user.store / "sha256", runtime / "containers", runtime / "names"):
        old.mkdir(parents=True, mode=0o755)  # as versions before 0700 left them
        os.chmod(old, 0o755)
    user.give(user.base)
    result = user.launch("run", "--rm", f"oci:{layout}", "--", "/sbin/suid-tool")
    assert (result.returncode, result.stdout) == (0, "tool\n"), result.stderr
    for private in (user.store, runtime / "containers", runtime / "names"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
    [tool] = layer_files(user.store, "sbin/suid-tool")
    if user.uid == 0:
        assert stat.S_IMODE(tool.stat().st_mode) == 0o4755  # root keeps it, in a store only root can reach
        assert not reachable_by_nobody(tool)
    else:
        assert stat.S_IMODE(tool.stat().st_mode) == 0o755  # never setuid for an unprivileged user


def test_setuid_bits_dropped_where_the_store_cannot_be_private(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a store another user owns)")
    layout = make_busybox_image(tmp_path / "img", [tar_layer(SUID_LAYER)])
    shared = tmp_path / "shared-store"
    shared.mkdir(mode=0o755)
    os.chown(shared, NOBODY, NOBODY)
    env = {**os.environ, "PBUILD_LAYER_STORE": str(shared), "PBUILD_RUNTIME_DIR": str(tmp_path / "run")}
    result = LauncherUser(0, tmp_path, env).launch("run", "--rm", f"oci:{layout}", "--", "/sbin/suid-tool")
    assert (result.returncode, result.stdout) == (0, "tool\n"), result.stderr
    assert f"the layer store {shared} is not private (owner uid {NOBODY}, mode 0755)" in result.stderr
    [tool] = layer_files(shared, "sbin/suid-tool")
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755


def big_image(layout: Path, files: int = 3000) -> Path:
    """An image whose last layer takes a while to unpack (many files, stored uncompressed)."""
    many = tar_layer([directory("many"), *(file(f"many/{i}", os.urandom(8192)) for i in range(files))])
    return write_oci(layout, [busybox_layer(), many], BASE_CONFIG, compress=False)


def wait_for_temporary(store: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.is_dir() for p in (store / "tmp").glob("*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no layer was being unpacked"
        time.sleep(0.002)


def test_a_killed_launcher_leaves_no_temporary_behind(launcher_user: LauncherUser) -> None:
    user = launcher_user
    layout = big_image(user.base / "big")
    small = make_busybox_image(user.base / "small")
    user.give(user.base)
    proc = user.popen("run", "--rm", f"oci:{layout}", "--", "true")
    wait_for_temporary(user.store, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert [p for p in (user.store / "tmp").iterdir() if p.is_dir()]  # left behind, half unpacked
    result = user.launch("run", "--rm", f"oci:{small}", "--", "true")
    assert result.returncode == 0, result.stderr
    assert list((user.store / "tmp").iterdir()) == []


def test_cleaning_spares_a_launcher_still_unpacking(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the launcher tests run as root")
    env = {
        **os.environ,
        "PBUILD_LAYER_STORE": str(tmp_path / "layers"),
        "PBUILD_RUNTIME_DIR": str(tmp_path / "run"),
    }
    user = LauncherUser(0, tmp_path, env)
    slow = user.popen("run", "--rm", f"oci:{big_image(tmp_path / 'big', files=6000)}", "--", "sh", "-c",
                      "ls /many | wc -l")  # fmt: skip
    wait_for_temporary(user.store, slow)
    for _ in range(3):  # each run cleans the temporaries: none of them may take the live one
        other = user.launch("run", "--rm", f"oci:{make_busybox_image(tmp_path / 'small')}", "--", "true")
        assert other.returncode == 0, other.stderr
    out, err = slow.communicate(timeout=120)
    assert (slow.returncode, out.strip()) == (0, "6000"), err
    assert list((user.store / "tmp").iterdir()) == []
