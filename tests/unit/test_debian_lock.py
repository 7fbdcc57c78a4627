"""`pbuild lock --debian` against a real signed archive served over HTTP, and lock staleness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.engine.api import ActionIO, Label
from pbuild.engine.errors import HashMismatch
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
    from pbuild.rules.debian.lock import find_targets

    repo = REPO
    targets = find_targets(str(repo / "third_party" / "debian"))
    assert targets, "third_party/debian/BUILD.toml declares no deb_packages target"
    for name, request in targets[""].items():
        locked = read_locked_target(str(repo), "third_party/debian", name, request)
        assert {p.name for p in locked.packages} >= set(request.packages)
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
