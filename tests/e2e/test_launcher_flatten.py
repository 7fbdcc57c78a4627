"""The flattened root filesystem (where overlayfs cannot mount): the image's links are followed
inside its root, never out of it, and a whiteout removes a link, never the host file behind it."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.tools.launcher.extract import extract_layer
from pbuild.tools.launcher.flatten import flatten

from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.testimages import directory, file, make_busybox_image, symlink, tar_layer


@pytest.fixture(params=USERS)
def launcher_user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    """Run the test as root, then as uid 65534."""
    with user_folder(request.param) as user:
        yield user


HOST_TEXT = "host file\n"


def escaping_layers(host: Path, marker: str) -> list[bytes]:
    """A lower layer of links out of the root (absolute, relative, one to white out through,
    one to white out itself) and ``var/run -> /run``; an upper layer that writes through them."""
    up = "../" * 16  # more than enough to reach / from any store or container directory
    lower = tar_layer([
        symlink("abs", str(host)),
        symlink("rel", up + str(host).lstrip("/")),
        symlink("through", str(host)),
        symlink("link", up + str(host).lstrip("/")),
        directory("data"), file("data/old", "old\n"), symlink("to-data", "/data"),
        directory("run"), directory("var"), symlink("var/run", "/run"),
    ])  # fmt: skip
    upper = tar_layer([
        directory("abs"), file("abs/keep", "image\n"),
        directory("rel"), file("rel/keep", "image\n"),
        directory("through"), file("through/.wh.keep"),
        file(".wh.link"),
        directory("to-data"), file("to-data/.wh.old"),
        directory("var"), directory("var/run"), file(f"var/run/{marker}", "in root\n"),
    ])  # fmt: skip
    return [lower, upper]


def make_host(parent: Path) -> Path:
    host = parent / "host-dir"
    host.mkdir()
    (host / "keep").write_text(HOST_TEXT)
    return host


def assert_host_untouched(host: Path, marker: str) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["keep"]  # not deleted, nothing added
    assert (host / "keep").read_text() == HOST_TEXT  # not overwritten
    assert not Path("/run", marker).exists()  # var/run/x did not land in the host's /run


def test_flatten_resolves_every_path_inside_the_root(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    marker = f"pbuild-test-{os.urandom(4).hex()}"
    layers = []
    try:
        for i, raw in enumerate(escaping_layers(host, marker)):
            layers.append(tmp_path / "store" / str(i))
            layers[-1].mkdir(parents=True)
            diff_id = f"sha256:{hashlib.sha256(raw).hexdigest()}"
            extract_layer(io.BytesIO(raw), str(layers[-1]), diff_id=diff_id, privileged=os.geteuid() == 0)
        root = tmp_path / "containers" / "c" / "flat"
        root.mkdir(parents=True)
        flatten([str(p) for p in layers], str(root))
        assert_host_untouched(host, marker)
    finally:
        Path("/run", marker).unlink(missing_ok=True)  # only the unfixed flatten writes it
    # Links that lead out of the root lead nowhere in it: the upper directory replaces them.
    assert (root / "abs/keep").read_text() == "image\n" and not (root / "abs").is_symlink()
    assert (root / "rel/keep").read_text() == "image\n" and not (root / "rel").is_symlink()
    assert list((root / "through").iterdir()) == []
    assert not os.path.lexists(root / "link")  # the whiteout removed the link itself
    # Links inside the root are followed there, as the container sees them.
    assert os.readlink(root / "var/run") == "/run"
    assert (root / "run" / marker).read_text() == "in root\n"
    assert os.readlink(root / "to-data") == "/data" and list((root / "data").iterdir()) == []


def test_flattened_container_touches_no_host_file(launcher_user: LauncherUser) -> None:
    """The same image run with PBUILD_LAUNCHER_NO_OVERLAY=1, as root and as uid 65534."""
    user = launcher_user
    host = make_host(user.base)
    marker = f"pbuild-test-{os.urandom(4).hex()}"
    layout = make_busybox_image(user.base / "img", escaping_layers(host, marker))
    user.give(host, user.base / "img")
    script = f"cat /abs/keep /rel/keep /run/{marker} /var/run/{marker}; ls -A /through; ls -d /link /data/old"
    try:
        result = user.launch("run", "--rm", f"oci:{layout}", "--", "sh", "-c", script,
                             env={"PBUILD_LAUNCHER_NO_OVERLAY": "1"})  # fmt: skip
        assert_host_untouched(host, marker)
    finally:
        Path("/run", marker).unlink(missing_ok=True)
    assert result.stdout == "image\nimage\nin root\nin root\n", result.stderr
    assert "/link: No such file" in result.stderr and "/data/old: No such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert stat.S_IMODE(host.stat().st_mode) == 0o755
