"""`pbuild system prune` beside real containers, as root and as uid 65534: a running container keeps
its layers and goes on working; stopped containers and layers nothing running uses go; a container
being set up (the layer store's lock held shared) makes prune wait."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launcher_users import USERS, LauncherUser, user_folder
from tests.support.testimages import file, make_busybox_image, tar_layer

PBUILD = (sys.executable, "-m", "pbuild.engine.cli")


@pytest.fixture(params=USERS)
def launcher_user(request: pytest.FixtureRequest) -> Iterator[LauncherUser]:
    with user_folder(request.param) as user:
        yield user


def pbuild(user: LauncherUser, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**user.env, "PBUILD_CACHE": str(user.base / "cache"), "XDG_CONFIG_HOME": str(user.base / "config")}
    return subprocess.run([*user.prefix(), *PBUILD, *args], env=env, cwd=user.base, capture_output=True,
                          text=True, timeout=timeout, check=False)


def layer_dirs(user: LauncherUser) -> set[str]:
    return {f"sha256:{p.name}" for p in (user.store / "sha256").iterdir()}


def diff_ids(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    return list(config["rootfs"]["diff_ids"])


def test_prune_keeps_a_running_containers_layers_and_it_goes_on_working(launcher_user: LauncherUser) -> None:
    user = launcher_user
    kept_image = make_busybox_image(user.base / "kept")
    other_image = make_busybox_image(user.base / "other", [tar_layer([file("only-here.txt", "other\n")])])
    user.give(user.base)
    running = user.launch("run", "-d", "--name", "keeper", f"oci:{kept_image}", "--", "sleep", "60")
    assert running.returncode == 0, running.stderr
    stopped = user.launch("run", "--name", "done", f"oci:{other_image}", "--", "cat", "/only-here.txt")
    assert (stopped.returncode, stopped.stdout) == (0, "other\n"), stopped.stderr
    kept, other = diff_ids(kept_image), diff_ids(other_image)
    only_other = set(other) - set(kept)
    assert len(only_other) == 1 and layer_dirs(user) == set(kept) | set(other)

    df = pbuild(user, "system", "df", "--format", "json")
    assert df.returncode == 0, df.stderr
    rows = {k["kind"]: k for k in json.loads(df.stdout)["kinds"]}
    assert (rows["Containers"]["total"], rows["Containers"]["active"]) == (2, 1)
    assert (rows["Layers"]["total"], rows["Layers"]["active"]) == (len(layer_dirs(user)), len(kept))
    assert 0 < rows["Layers"]["reclaimable"] < rows["Layers"]["size"]

    pruned = pbuild(user, "system", "prune", "-a", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert "Deleted containers:" in pruned.stdout and "Deleted layers:" in pruned.stdout, pruned.stdout
    assert f"  {next(iter(only_other))}" in pruned.stdout
    assert layer_dirs(user) == set(kept)  # the running container's layers stay, all of them
    assert "done" not in user.launch("ps", "-a").stdout
    # The container still works: its files (from those layers) and new processes in it.
    works = user.launch("exec", "keeper", "cat", "/app/hello.txt")
    assert works.returncode == 0 and works.stdout.strip(), works.stderr
    assert "keeper" in user.launch("ps").stdout
    state = next((Path(user.env["PBUILD_RUNTIME_DIR"]) / "containers").glob("*/state.json"))
    assert json.loads(state.read_text())["extra"]["layers"] == kept  # what prune went by

    # Once it is gone, its layers are unused: the next prune takes them.
    assert user.launch("rm", "-f", "keeper").returncode == 0
    again = pbuild(user, "system", "prune", "-f")
    assert again.returncode == 0, again.stderr
    assert layer_dirs(user) == set()


def test_prune_waits_for_a_container_being_set_up(launcher_user: LauncherUser) -> None:
    user = launcher_user
    image = make_busybox_image(user.base / "img")
    user.give(user.base)
    assert user.launch("run", "--rm", f"oci:{image}", "--", "true").returncode == 0
    # A launcher between reading the image and its container running holds the lock shared.
    lock = os.open(user.store / "gc.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_SH)
    env = {**user.env, "PBUILD_CACHE": str(user.base / "cache"), "XDG_CONFIG_HOME": str(user.base / "config")}
    prune = subprocess.Popen([*user.prefix(), *PBUILD, "system", "prune", "-f"], env=env, cwd=user.base,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert prune.poll() is None  # waiting
        assert len(layer_dirs(user)) == 2  # nothing removed yet
    finally:
        os.close(lock)
    out, err = prune.communicate(timeout=60)
    assert prune.returncode == 0, err
    assert "containers are starting" in err and "waiting for them" in err, err
    assert layer_dirs(user) == set()


def test_prune_takes_dangling_images_and_with_all_every_image_no_running_container_uses(
        launcher_user: LauncherUser) -> None:
    from pbuild.engine.store import LocalStore, OciBlobs
    from pbuild.lib.oci.imagestore import ImageStore

    from tests.support.ocimini import write_image

    user = launcher_user
    cache = user.base / "cache"
    store = ImageStore.at(str(cache), OciBlobs(LocalStore(str(cache))))
    used = store.add_layout(str(make_busybox_image(user.base / "used")), ["example.com/app:used"], "test")
    write_image(user.base / "dangling", "dangling")
    dangling = store.add_layout(str(user.base / "dangling"), [], "test")
    write_image(user.base / "named", "named")
    named = store.add_layout(str(user.base / "named"), ["example.com/app:named"], "test")
    user.give(user.base)
    running = user.launch("run", "-d", "--name", "user", f"oci:{used.layout}", "--", "sleep", "60")
    assert running.returncode == 0, running.stderr

    df = pbuild(user, "system", "df", "--format", "json")
    assert df.returncode == 0, df.stderr
    images = {k["kind"]: k for k in json.loads(df.stdout)["kinds"]}["Images"]
    assert (images["total"], images["active"]) == (3, 1)
    # -a would free both unused images' blobs: the layout links and the CAS links together.
    assert 0 < images["reclaimable"] < images["size"]

    plain = pbuild(user, "system", "prune", "-f")
    assert plain.returncode == 0, plain.stderr
    assert f"deleted: {dangling.digest}" in plain.stdout and named.digest not in plain.stdout, plain.stdout
    left = ImageStore.at(str(cache), OciBlobs(LocalStore(str(cache))))
    assert {i.digest for i in left.images()} == {used.digest, named.digest}
    blobs = OciBlobs(LocalStore(str(cache)))
    assert all(blobs.get(d, None) is not None for d in named.blobs)  # a kept image keeps its blobs
    assert all(blobs.get(d, None) is None for d in set(dangling.blobs) - set(named.blobs) - set(used.blobs))

    everything = pbuild(user, "system", "prune", "-a", "-f")
    assert everything.returncode == 0, everything.stderr
    assert "untagged: example.com/app:named" in everything.stdout and f"deleted: {named.digest}" in everything.stdout
    assert used.digest not in everything.stdout
    assert [i.digest for i in left.images()] == [used.digest]  # the running container's image stays
    assert all(blobs.get(d, None) is not None for d in used.blobs)
    works = user.launch("exec", "user", "cat", "/app/hello.txt")
    assert works.returncode == 0 and works.stdout.strip(), works.stderr


def test_a_program_running_on_its_toolchain_keeps_the_tree_through_a_prune(tmp_path: Path) -> None:
    """`pbuild run` of a py_binary holds its toolchain tree's lock for the program's life: a prune
    meanwhile leaves the tree, and the next prune (the program gone) removes it."""
    from tests.support.imageclone import clone_app_workspace
    from tests.support.runner import Runner

    ws = clone_app_workspace(tmp_path / "ws")
    (ws / "sleeper").mkdir()
    (ws / "sleeper" / "BUILD.toml").write_text('[bin]\nrule = "py_binary"\nsrcs = ["main.py"]\nmain = "main.py"\n')
    (ws / "sleeper" / "main.py").write_text(
        "import pathlib, sys, time\n"
        "marker, release = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "marker.write_text('started')\n"
        "while not release.exists():\n"
        "    time.sleep(0.05)\n"
        "print(pathlib.Path('/etc/os-release').read_text().splitlines()[0])\n")
    run = Runner(tmp_path)
    trees = run.cache / "toolchains"
    marker, release = ws / "started", ws / "release"  # the program sees the workspace, not /tmp
    program = run.popen("run", "//sleeper:bin", str(marker), str(release), cwd=ws)
    try:
        deadline = time.monotonic() + 600  # the first run unpacks the Python toolchain
        while not marker.exists() and program.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), program.communicate()
        held = sorted(p.name for p in trees.iterdir() if p.is_dir())
        assert held, "the program runs on no toolchain tree"
        pruned = run("system", "prune", "-a", "-f", cwd=ws)
        assert pruned.code == 0, str(pruned)
        assert sorted(p.name for p in trees.iterdir() if p.is_dir()) == held
        release.write_text("")
        out, err = program.communicate(timeout=60)
        assert program.returncode == 0 and out.startswith("PRETTY_NAME="), err
    finally:
        release.write_text("")
        if program.poll() is None:
            program.kill()
            program.wait()
    assert run("system", "prune", "-a", "-f", cwd=ws).code == 0
    assert not [p for p in trees.iterdir() if p.is_dir()]
