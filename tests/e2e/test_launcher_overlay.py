"""Images of more layers than one overlayfs mount takes (500): the bottom ones are stacked
first, and whiteouts and opaque directories still reach across; beyond 999, a clear refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.tools.launcher import mounts
from pbuild.tools.launcher.errors import LauncherError
from pbuild.tools.sandbox.nsops import Mount

from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.testimages import directory, file, make_busybox_image, tar_layer


@pytest.fixture(params=USERS)
def launcher_user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    """Run the test as root, then as uid 65534."""
    with user_folder(request.param) as user:
        yield user


def many_layers(count: int) -> list[bytes]:
    """``count`` small layers; whiteouts and an opaque directory reach across the point where
    the launcher splits them into two overlays."""
    layers = []
    for i in range(count):
        entries = [directory("layers"), file(f"layers/{i}", f"{i}\n")]
        if i == 10:
            entries += [file("gone-inner"), file("gone-across"), directory("opq"), file("opq/old")]
        if i == 20:
            entries += [file(".wh.gone-inner")]
        if i == count - 5:
            entries += [file(".wh.gone-across"), directory("opq"), file("opq/.wh..wh..opq"), file("opq/new")]
        layers.append(tar_layer(entries))
    return layers


def test_an_image_of_600_layers_runs(launcher_user: LauncherUser) -> None:
    user = launcher_user
    layout = make_busybox_image(user.base / "img", many_layers(598))  # + busybox and app: 600
    user.give(user.base)
    script = "ls /layers | wc -l; cat /layers/0 /layers/597 /app/hello.txt; ls / | grep gone; ls /opq"
    result = user.launch("run", "--rm", f"oci:{layout}", "--", "sh", "-c", script, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["598", "0", "597", "hello from layer 2", "new", ""]


def test_layer_count_limits_of_overlayfs(tmp_path: Path) -> None:
    def mount_ops(count: int) -> list[Mount]:
        ops = mounts.overlay_ops(mounts.RootFs(str(tmp_path), tuple(f"/store/{i}" for i in range(count))))
        return [op for op in ops if isinstance(op, Mount)]

    [single] = mount_ops(mounts.OVERLAY_MAX_LOWER)
    assert single.data is not None and single.data.startswith("lowerdir=l/499:") and len(single.data) < 4096
    bottom, top = mount_ops(mounts.OVERLAY_MAX_LAYERS)
    assert bottom.target == "lower" and bottom.data == "lowerdir=" + ":".join(f"l/{i}" for i in reversed(range(500))) + ",userxattr"  # fmt: skip
    assert (
        top.data is not None
        and top.data.count(":") == mounts.OVERLAY_MAX_LOWER - 1
        and ":lower,upperdir=" in top.data
    )
    with pytest.raises(LauncherError) as error:
        mount_ops(mounts.OVERLAY_MAX_LAYERS + 1)
    assert "the image has 1000 layers; overlayfs stacks at most 999" in error.value.message
    assert error.value.hint is not None and "PBUILD_LAUNCHER_NO_OVERLAY=1" in error.value.hint
