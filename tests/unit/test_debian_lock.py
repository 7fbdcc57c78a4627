"""`pbuild lock --debian` against a real signed archive served over HTTP, and lock staleness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.api import ActionIO, Label
from pbuild.engine.errors import HashMismatch, WorkspaceError
from pbuild.lib.platforms import Platform
from pbuild.rules.debian.archive import ArchiveError
from pbuild.rules.debian.lock import LOCK_NAME, DebianLockError, Request, lock_debian, read_locked_target
from pbuild.rules.debian.resolve import ResolveError
from pbuild.rules.debian.rules import fetch_deb

from tests.support.debfixtures import DebSpec, make_keyring, serve, write_archive
from tests.support.paths import REPO

PACKAGES = [
    DebSpec("python3.11-minimal", version="3.11.2-6", depends="libc6 (>= 2.34), libexpat1"),
    DebSpec("libc6", version="2.36-9", pre_depends="libgcc-s1"),
    DebSpec("libgcc-s1", version="12.2.0-14"),
    DebSpec("libexpat1", version="2.5.0-1"),
    DebSpec("ca-certificates", architecture="all", depends="debconf (>= 0.5) | debconf-2.0"),
    DebSpec("cdebconf", provides="debconf-2.0"),
    DebSpec("broken", depends="libc6 (>= 99)"),
]
BUILD = """\
[py]
rule = "deb_packages"
packages = ["python3.11-minimal", "ca-certificates"]
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(mirror URL, archive root, keyring) of a signed bookworm archive."""
    root = tmp_path_factory.mktemp("archive")
    home = tmp_path_factory.mktemp("gnupg")
    keyring = make_keyring(home)
    write_archive(root, "bookworm", PACKAGES, gnupg_home=home)
    with serve(root) as url:
        yield url, root, keyring


def _workspace(tmp_path: Path, build: str = BUILD) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "WORKSPACE.toml").write_text('[workspace]\nname = "t"\n')
    (tmp_path / "third_party/debian").mkdir(parents=True)
    (tmp_path / "third_party/debian/BUILD.toml").write_text(build)
    return tmp_path


def test_lock_resolves_closure_without_host(archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, root, keyring = archive
    ws = _workspace(tmp_path)
    lock_debian(str(ws), mirror=url, keyring=str(keyring))
    text = (ws / "third_party/debian" / LOCK_NAME).read_text()
    assert "127.0.0.1" not in text and "http" not in text.replace("https://www.debian.org", "")
    data = json.loads(text)
    entry = data["targets"]["py"]
    assert entry["request"]["packages"] == ["ca-certificates", "python3.11-minimal"]
    names = [p["name"] for p in entry["packages"]]
    assert names == ["ca-certificates", "cdebconf", "libc6", "libexpat1", "libgcc-s1", "python3.11-minimal"]
    libc = next(p for p in entry["packages"] if p["name"] == "libc6")
    assert libc["dependencies"] == ["libgcc-s1"]
    deb = root / libc["filename"]
    assert libc["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest() and libc["size"] == deb.stat().st_size
    assert entry["os_release"] == {"codename": "bookworm", "version": "12.9"}
    locked = read_locked_target(str(ws), "third_party/debian", "py", Request(("python3.11-minimal", "ca-certificates")))
    assert len(locked.packages) == 6


def test_lock_out_of_date_with_package_list(archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, keyring = archive
    ws = _workspace(tmp_path)
    lock_debian(str(ws), mirror=url, keyring=str(keyring))
    with pytest.raises(DebianLockError) as info:
        read_locked_target(str(ws), "third_party/debian", "py", Request(("python3.11-minimal",)))
    assert "out of date with the package list" in info.value.message
    assert info.value.hint and "./pbuild lock --debian" in info.value.hint
    with pytest.raises(DebianLockError, match="no entry for target"):
        read_locked_target(str(ws), "third_party/debian", "other", Request(("x",)))
    with pytest.raises(DebianLockError, match="no Debian lock"):
        read_locked_target(str(ws), "elsewhere", "py", Request(("x",)))


def test_unknown_package_suggests(archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, keyring = archive
    ws = _workspace(tmp_path, BUILD.replace('"ca-certificates"', '"ca-certificate"'))
    with pytest.raises(ResolveError) as info:
        lock_debian(str(ws), mirror=url, keyring=str(keyring))
    assert "ca-certificate (did you mean: ca-certificates" in info.value.message
    assert not (ws / "third_party/debian" / LOCK_NAME).exists()


def test_unsatisfiable(archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, keyring = archive
    ws = _workspace(tmp_path, BUILD.replace('"ca-certificates"', '"broken"'))
    with pytest.raises(ResolveError, match=r"broken 1.0-1 needs libc6 \(>= 99\); available: libc6: 2.36-9"):
        lock_debian(str(ws), mirror=url, keyring=str(keyring))


def test_wrong_signature_is_refused(archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, _ = archive
    other = make_keyring(tmp_path / "other-gnupg")
    with pytest.raises(ArchiveError, match="InRelease signature does not verify"):
        lock_debian(str(_workspace(tmp_path / "ws")), mirror=url, keyring=str(other))


def _fetch(tmp_path: Path, url: str, filename: str, sha256: str, size: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBUILD_DEBIAN_MIRROR", url)
    out = tmp_path / "out.deb"
    io = ActionIO({}, {"o.deb": str(out)}, str(tmp_path), Label("t", "x"))
    fetch_deb(io, {"suite": "bookworm", "filename": filename, "sha256": sha256, "size": size, "output": "o.deb"})
    return out


def test_fetch_verifies_sha256(archive: tuple[str, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, root, _ = archive
    deb = next(root.rglob("libc6_*.deb"))
    filename = deb.relative_to(root).as_posix()
    good = hashlib.sha256(deb.read_bytes()).hexdigest()
    out = _fetch(tmp_path, url, filename, good, deb.stat().st_size, monkeypatch)
    assert out.read_bytes() == deb.read_bytes()
    wrong = "0" * 64
    with pytest.raises(HashMismatch) as info:
        _fetch(tmp_path, url, filename, wrong, deb.stat().st_size, monkeypatch)
    assert deb.name in info.value.message and wrong in info.value.message and good in info.value.message


def test_committed_lock_matches_its_build_file() -> None:
    """The repo's own lock is up to date with third_party/debian/BUILD.toml and names no host."""
    from pbuild.rules.debian.lock import find_targets, workspace_platforms

    repo = REPO
    platforms = workspace_platforms(str(repo)).locks
    targets = find_targets(str(repo / "third_party" / "debian"), platforms)
    assert targets, "third_party/debian/BUILD.toml declares no deb_packages target"
    for name, request in targets[""].items():
        locked = read_locked_target(str(repo), "third_party/debian", name, request)
        for platform in platforms:
            packages = locked.packages_for(platform)
            assert {p.name for p in packages} >= set(request.packages)
            assert {p.architecture for p in packages} <= {platform.debian_arch, "all"}
    text = (repo / "third_party/debian" / LOCK_NAME).read_text()
    assert "http://" not in text and "https://" not in text


def test_find_targets_skips_ignored_folders_and_nested_workspaces(tmp_path: Path) -> None:
    from pbuild.rules.debian.lock import find_targets

    ws = _workspace(tmp_path)
    (ws / ".pbuildignore").write_text("/bench/workspaces/\n")
    for folder in ("bench/workspaces/x", "nested/third_party"):
        (ws / folder).mkdir(parents=True)
        (ws / folder / "BUILD.toml").write_text(BUILD)
    (ws / "nested/WORKSPACE.toml").write_text("")
    assert list(find_targets(str(ws))) == ["third_party/debian"]


# ---------------------------------------------------------------------------------------------
# Several lock platforms

TWO_PLATFORMS = '[workspace]\nname = "t"\n[platforms]\nlocks = ["linux/amd64", "linux/arm64"]\n'
AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
#: The same packages for arm64, except that ``cpuid`` exists only for amd64 and the arm64 libc6
#: is a newer upload; ca-certificates (Architecture: all) is shared.
ARM64_PACKAGES = [
    DebSpec("cpuid", version="20230120-1", depends="libc6"),
    DebSpec("python3.11-minimal", version="3.11.2-6", architecture="arm64", depends="libc6 (>= 2.34), libexpat1"),
    DebSpec("libc6", version="2.36-9+b1", architecture="arm64", pre_depends="libgcc-s1"),
    DebSpec("libgcc-s1", version="12.2.0-14", architecture="arm64"),
    DebSpec("libexpat1", version="2.5.0-1", architecture="arm64"),
    DebSpec("cdebconf", architecture="arm64", provides="debconf-2.0"),
]


@pytest.fixture(scope="module")
def two_arch_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(mirror URL, archive root, keyring) of a signed bookworm archive with amd64 and arm64 indexes."""
    root = tmp_path_factory.mktemp("archive2")
    home = tmp_path_factory.mktemp("gnupg2")
    keyring = make_keyring(home)
    write_archive(root, "bookworm", PACKAGES + ARM64_PACKAGES, gnupg_home=home, arch=("amd64", "arm64"))
    with serve(root) as url:
        yield url, root, keyring


def test_lock_for_two_platforms(two_arch_archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, root, keyring = two_arch_archive
    ws = _workspace(tmp_path)
    (ws / "WORKSPACE.toml").write_text(TWO_PLATFORMS)
    lock_debian(str(ws), mirror=url, keyring=str(keyring))
    data = json.loads((ws / "third_party/debian" / LOCK_NAME).read_text())
    entry = data["targets"]["py"]
    assert entry["request"] == {"packages": ["ca-certificates", "python3.11-minimal"], "suites": ["bookworm"],
                                "platforms": ["linux/amd64", "linux/arm64"], "components": ["main"]}
    assert set(entry) == {"request", "os_release", "packages", "platforms"}
    assert list(entry["platforms"]) == ["linux/arm64"]
    amd64 = {p["name"]: p for p in entry["packages"]}
    arm64 = {p["name"]: p for p in entry["platforms"]["linux/arm64"]["packages"]}
    assert sorted(amd64) == sorted(arm64) == ["ca-certificates", "cdebconf", "libc6", "libexpat1", "libgcc-s1",
                                              "python3.11-minimal"]
    assert {p["architecture"] for p in amd64.values()} == {"amd64", "all"}
    assert {p["architecture"] for p in arm64.values()} == {"arm64", "all"}
    # The Architecture: all package is the same file on both; the others are each platform's own.
    assert amd64["ca-certificates"] == arm64["ca-certificates"]
    assert arm64["libc6"]["version"] == "2.36-9+b1" and arm64["libc6"]["filename"].endswith("_arm64.deb")
    for package in arm64.values():
        deb = root / package["filename"]
        assert package["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    # Read back per platform, in the order of [platforms] locks.
    request = Request(("python3.11-minimal", "ca-certificates"), platforms=(AMD64, ARM64))
    locked = read_locked_target(str(ws), "third_party/debian", "py", request)
    assert [p.name for p in locked.packages_for(ARM64)] == sorted(arm64)
    assert locked.packages == locked.packages_for(AMD64)
    # Only amd64: the same lock as a workspace without [platforms] gets (the format before platforms).
    single = _workspace(tmp_path / "single")
    lock_debian(str(single), mirror=url, keyring=str(keyring))
    only_amd64 = json.loads((single / "third_party/debian" / LOCK_NAME).read_text())["targets"]["py"]
    assert only_amd64["request"]["architecture"] == "amd64" and "platforms" not in only_amd64
    assert only_amd64["packages"] == entry["packages"]


def test_single_platform_lock_is_unchanged_text(archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    """A workspace without [platforms] writes the lock as pbuild did before platforms existed."""
    url, _, keyring = archive
    ws = _workspace(tmp_path)
    lock_debian(str(ws), mirror=url, keyring=str(keyring))
    text = (ws / "third_party/debian" / LOCK_NAME).read_text()
    request = json.loads(text)["targets"]["py"]["request"]
    assert list(request) == ["architecture", "components", "packages", "suites"]
    assert '"platforms"' not in text


def test_package_missing_on_one_platform_names_it(two_arch_archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, keyring = two_arch_archive
    ws = _workspace(tmp_path, BUILD.replace('"ca-certificates"', '"cpuid"'))
    (ws / "WORKSPACE.toml").write_text(TWO_PLATFORMS)
    with pytest.raises(ResolveError) as info:
        lock_debian(str(ws), mirror=url, keyring=str(keyring))
    assert "no such Debian package (//third_party/debian:py for linux/arm64): cpuid" in info.value.message
    assert not (ws / "third_party/debian" / LOCK_NAME).exists()


def test_stale_when_platforms_change(two_arch_archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, keyring = two_arch_archive
    ws = _workspace(tmp_path)
    lock_debian(str(ws), mirror=url, keyring=str(keyring))  # amd64 only
    request = Request(("python3.11-minimal", "ca-certificates"), platforms=(AMD64, ARM64))
    with pytest.raises(DebianLockError) as info:
        read_locked_target(str(ws), "third_party/debian", "py", request)
    assert info.value.message.endswith("out of date with [platforms] locks of WORKSPACE.toml: target 'py' is "
                                       "locked for linux/amd64, the workspace asks for linux/amd64, linux/arm64")
    assert info.value.hint and "./pbuild lock --debian" in info.value.hint


def test_a_platform_the_entry_lacks_is_named(two_arch_archive: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, _, keyring = two_arch_archive
    ws = _workspace(tmp_path)
    (ws / "WORKSPACE.toml").write_text(TWO_PLATFORMS)
    lock_debian(str(ws), mirror=url, keyring=str(keyring))
    path = ws / "third_party/debian" / LOCK_NAME
    data = json.loads(path.read_text())
    del data["targets"]["py"]["platforms"]["linux/arm64"]
    path.write_text(json.dumps(data))
    request = Request(("python3.11-minimal", "ca-certificates"), platforms=(AMD64, ARM64))
    with pytest.raises(DebianLockError, match="does not cover platform linux/arm64 for target 'py'"):
        read_locked_target(str(ws), "third_party/debian", "py", request)


def test_bad_platforms_table_is_an_error_at_the_workspace_file(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    (ws / "WORKSPACE.toml").write_text('[platforms]\nlocks = ["linux/riscv64"]\n')
    with pytest.raises(WorkspaceError) as info:
        lock_debian(str(ws), mirror="http://127.0.0.1:9")
    assert "unknown platform 'linux/riscv64'" in info.value.message
    assert info.value.location is not None and str(info.value.location.path).endswith("WORKSPACE.toml")
    assert info.value.exit_code == 2


def test_architecture_attribute_is_refused(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, BUILD + 'architecture = "arm64"\n')
    with pytest.raises(DebianLockError) as info:
        lock_debian(str(ws), mirror="http://127.0.0.1:9")
    assert "sets 'architecture'" in info.value.message and info.value.hint and "[platforms]" in info.value.hint
