"""deb_packages on several lock platforms, through the CLI: lock, build, and the errors when the
lock and WORKSPACE.toml's [platforms] disagree (a real signed archive with amd64 and arm64 indexes)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.debfixtures import DebSpec, make_keyring, serve, write_archive
from tests.support.runner import Runner, WorkspaceFactory, assert_user_error

AMD64_ONLY = '[workspace]\nname = "fixture"\n'
TWO = '[workspace]\nname = "fixture"\n[platforms]\nlocks = ["linux/amd64", "linux/arm64"]\n'
BUILD = '[base]\nrule = "deb_packages"\npackages = ["hello"]\n'
SPECS = [
    DebSpec("hello", version="2.10-3", depends="libc6", files={"usr/bin/hello": b"amd64 hello\n"}),
    DebSpec("hello", version="2.10-3", architecture="arm64", depends="libc6", files={"usr/bin/hello": b"arm64 hello\n"}),
    DebSpec("libc6", version="2.36-9", files={"usr/lib/x86_64-linux-gnu/libc.so.6": b"amd64"}),
    DebSpec("libc6", version="2.36-9", architecture="arm64", files={"usr/lib/aarch64-linux-gnu/libc.so.6": b"arm64"}),
    DebSpec("tzdata", version="2024a-0", architecture="all", files={"usr/share/zoneinfo/UTC": b"TZif"}),
    # A program whose amd64 build uses CPython 3.11 and whose arm64 build 3.12.
    DebSpec("tool", depends="python3.11-minimal"),
    DebSpec("tool", architecture="arm64", depends="python3.12-minimal"),
    DebSpec("python3.11-minimal", version="3.11.2-6", files={"usr/lib/python3.11/os.py": b"X = 1\n"}),
    DebSpec("python3.12-minimal", version="3.12.1-1", architecture="arm64",
            files={"usr/lib/python3.12/os.py": b"X = 1\n"}),
]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment that points pbuild at a signed two-architecture archive."""
    root = tmp_path_factory.mktemp("archive")
    home = tmp_path_factory.mktemp("gnupg")
    keyring = make_keyring(home)
    write_archive(root, "bookworm", SPECS, gnupg_home=home, arch=("amd64", "arm64"))
    with serve(root) as url:
        yield {"PBUILD_DEBIAN_MIRROR": url, "PBUILD_DEBIAN_KEYRING": str(keyring)}


def _names(blob: Path) -> dict[str, bytes]:
    with tarfile.open(blob) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_two_platforms_lock_and_build(workspace: WorkspaceFactory, pbuild: Runner, mirror: dict[str, str]) -> None:
    ws = workspace({"third_party/debian/BUILD.toml": BUILD + '\n[tz]\nrule = "deb_packages"\npackages = ["tzdata"]\n'},
                   workspace_toml=TWO)
    locked = pbuild("lock", "--debian", cwd=ws, env=mirror)
    assert locked.code == 0, locked
    assert "locked //third_party/debian:base: 2 packages (2 + 2 for linux/amd64, linux/arm64)" in locked.err
    built = pbuild("build", "//third_party/debian:base", "//third_party/debian:tz", cwd=ws, env=mirror)
    assert built.code == 0, built
    out = ws / "pbuild-out/third_party/debian"
    amd64, arm64 = _names(out / "base/layer.tar.gz"), _names(out / "base/linux-arm64/layer.tar.gz")
    assert amd64["usr/bin/hello"] == b"amd64 hello\n" and arm64["usr/bin/hello"] == b"arm64 hello\n"
    assert "usr/lib/aarch64-linux-gnu/libc.so.6" in arm64 and "usr/lib/x86_64-linux-gnu/libc.so.6" not in arm64
    assert sorted(p.name for p in (out / "base/debs").iterdir()) == ["hello_2.10-3_amd64.deb", "libc6_2.36-9_amd64.deb"]
    assert sorted(p.name for p in (out / "base/linux-arm64/debs").iterdir()) == [
        "hello_2.10-3_arm64.deb", "libc6_2.36-9_arm64.deb"]
    # An Architecture: all package is fetched once; both platforms' layers are made of it.
    assert [p.name for p in (out / "tz/debs").iterdir()] == ["tzdata_2024a-0_all.deb"]
    assert not (out / "tz/linux-arm64/debs").exists()
    assert _names(out / "tz/layer.tar.gz")["usr/share/zoneinfo/UTC"] == b"TZif"
    contents = json.loads((out / "base/linux-arm64/layer.json").read_text())["contents"]
    assert [(p["name"], p["architecture"], p["filename"]) for p in contents["packages"]] == [
        ("hello", "arm64", "hello_2.10-3_arm64.deb"), ("libc6", "arm64", "libc6_2.36-9_arm64.deb")]
    # 2 + 2 + 1 fetches, 4 layers.
    assert built.summary.startswith("9 actions:"), built


def test_stale_lock_when_platforms_change(workspace: WorkspaceFactory, pbuild: Runner, mirror: dict[str, str]) -> None:
    ws = workspace({"third_party/debian/BUILD.toml": BUILD}, workspace_toml=AMD64_ONLY)
    assert pbuild("lock", "--debian", cwd=ws, env=mirror).code == 0
    assert pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror).code == 0
    (ws / "WORKSPACE.toml").write_text(TWO)
    result = pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror)
    assert_user_error(result, 2, "third_party/debian/BUILD.toml:", "out of date with [platforms] locks of WORKSPACE.toml",
                      "locked for linux/amd64, the workspace asks for linux/amd64, linux/arm64",
                      "run `./pbuild lock --debian`")
    # Locked again, it builds; back to one platform, the lock is stale the other way.
    assert pbuild("lock", "--debian", cwd=ws, env=mirror).code == 0
    assert pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror).code == 0
    (ws / "WORKSPACE.toml").write_text(AMD64_ONLY)
    assert_user_error(pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror), 2,
                      "locked for linux/amd64, linux/arm64, the workspace asks for linux/amd64")


def test_platform_the_lock_does_not_cover(workspace: WorkspaceFactory, pbuild: Runner, mirror: dict[str, str]) -> None:
    ws = workspace({"third_party/debian/BUILD.toml": BUILD}, workspace_toml=TWO)
    assert pbuild("lock", "--debian", cwd=ws, env=mirror).code == 0
    lock = ws / "third_party/debian/debian.lock.json"
    data = json.loads(lock.read_text())
    del data["targets"]["base"]["platforms"]["linux/arm64"]
    lock.write_text(json.dumps(data))
    assert_user_error(pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror), 2,
                      "debian.lock.json does not cover platform linux/arm64 for target 'base'",
                      "run `./pbuild lock --debian`")
    # An image platform the locks do not cover is refused at WORKSPACE.toml's [platforms].
    (ws / "WORKSPACE.toml").write_text(AMD64_ONLY + '[platforms]\nimages = ["linux/arm64"]\n')
    assert_user_error(pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror), 2,
                      "images names linux/arm64, which the locks do not cover")
    assert_user_error(pbuild("lock", "--debian", cwd=ws, env=mirror), 2, "WORKSPACE.toml",
                      "images names linux/arm64, which the locks do not cover")


def test_package_missing_on_a_platform(workspace: WorkspaceFactory, pbuild: Runner,
                                       tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    keyring = make_keyring(home)
    write_archive(tmp_path / "archive", "bookworm", [SPECS[0], SPECS[2], SPECS[3]], gnupg_home=home,
                  arch=("amd64", "arm64"))
    ws = workspace({"third_party/debian/BUILD.toml": BUILD}, workspace_toml=TWO)
    with serve(tmp_path / "archive") as url:
        result = pbuild("lock", "--debian", cwd=ws, env={"PBUILD_DEBIAN_MIRROR": url,
                                                          "PBUILD_DEBIAN_KEYRING": str(keyring)})
    assert_user_error(result, 2, "no such Debian package (//third_party/debian:base for linux/arm64): hello")


def test_architecture_attribute_is_an_error(workspace: WorkspaceFactory, pbuild: Runner, mirror: dict[str, str]) -> None:
    ws = workspace({"third_party/debian/BUILD.toml": BUILD + 'architecture = "arm64"\n'})
    result = pbuild("build", "//third_party/debian:base", cwd=ws, env=mirror)
    assert_user_error(result, 2, "third_party/debian/BUILD.toml:4", "'architecture'", "[platforms]")
    assert_user_error(pbuild("lock", "--debian", cwd=ws, env=mirror), 2, "sets 'architecture'", "[platforms]")


def test_different_cpythons_on_the_platforms(workspace: WorkspaceFactory, pbuild: Runner,
                                             mirror: dict[str, str]) -> None:
    # The amd64 interpreter compiles the arm64 bytecode, so both closures need the same python3.X.
    ws = workspace({"third_party/debian/BUILD.toml": '[tool]\nrule = "deb_packages"\npackages = ["tool"]\n'},
                   workspace_toml=TWO)
    assert pbuild("lock", "--debian", cwd=ws, env=mirror).code == 0
    assert_user_error(pbuild("build", "//third_party/debian:tool", cwd=ws, env=mirror), 2,
                      "third_party/debian/BUILD.toml:3", "different CPythons (linux/amd64: python3.11; "
                      "linux/arm64: python3.12)", "same python3.X-minimal")
