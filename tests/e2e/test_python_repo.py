"""End-to-end tests of the Python rules on this repository's own targets, with the real index.

They copy what the targets need (WORKSPACE.toml, the third-party lock, app/program.py, pbuild's
own sources) into tmp_path and fetch the locked wheels through the host's pip configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO, pbuild_folders
from tests.support.runner import Runner

PROGRAM_BUILD = '[program]\nrule = "py_binary"\nsrcs = ["program.py"]\nmain = "program.py"\n' \
                'deps = ["//third_party/python:numpy"]\n'


def _copy_repo(root: Path, *, pbuild_sources: bool = False) -> Path:
    root.mkdir(parents=True)
    shutil.copy(REPO / "WORKSPACE.toml", root / "WORKSPACE.toml")
    for part in ("python", "debian"):  # the locks, and the toolchains WORKSPACE.toml names
        shutil.copytree(REPO / "third_party" / part, root / "third_party" / part,
                        ignore=shutil.ignore_patterns("pbuild-out"))
    (root / "app").mkdir()
    shutil.copy(REPO / "app" / "program.py", root / "app" / "program.py")
    (root / "app" / "BUILD.toml").write_text(PROGRAM_BUILD)
    if pbuild_sources:
        shutil.copy(REPO / "BUILD.toml", root / "BUILD.toml")
        shutil.copy(REPO / ".pbuildignore", root / ".pbuildignore")  # rules/builtin holds no packages of it
        ignore = shutil.ignore_patterns("__pycache__")
        for folder in pbuild_folders():
            shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    return root


@pytest.fixture(scope="session")
def repo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repo-cache")


def test_repo_lock_is_up_to_date_and_has_no_hosts():
    from pbuild.rules.python.lockfile import inputs_digest, parse_lock

    text = (REPO / "third_party/python/requirements.lock").read_text()
    lock = parse_lock(text)
    assert lock.inputs_sha256 == inputs_digest((REPO / "third_party/python/requirements.in").read_text())
    names = set(lock.by_name())
    assert {"numpy", "xxhash", "pathspec", "pex", "rich", "installer", "zstandard", "grpcio",
            "protobuf", "packaging"} <= names
    assert "://" not in text and str(REPO.parent) not in text  # no host, no machine path


@pytest.mark.slow
def test_run_app_program_prints_18(tmp_path: Path, repo_cache: Path):
    root = _copy_repo(tmp_path / "ws")
    pbuild = Runner(tmp_path)
    result = pbuild("run", "//app:program", cwd=root, cache=repo_cache, timeout=600)
    assert result.code == 0, str(result)
    assert result.out == "18\n"
    # The installed numpy carries hash-based pycs, and a second run rebuilds nothing.
    again = pbuild("run", "//app:program", cwd=root, cache=repo_cache, timeout=120)
    assert again.code == 0 and again.out == "18\n", str(again)
    pycs = list((root / "pbuild-out/third_party/python/site/numpy/numpy/__pycache__").glob("*.pyc"))
    assert pycs and all(int.from_bytes(p.read_bytes()[4:8], "little") & 1 for p in pycs)


@pytest.mark.slow
def test_self_hosted_pbuild_pex_runs(tmp_path: Path, repo_cache: Path):
    root = _copy_repo(tmp_path / "ws", pbuild_sources=True)
    pbuild = Runner(tmp_path)
    result = pbuild("build", "//:pbuild", cwd=root, cache=repo_cache, timeout=900)
    assert result.code == 0, str(result)
    pex = root / "pbuild-out" / "pbuild.pex"
    env = {"PATH": os.environ["PATH"], "PEX_ROOT": str(tmp_path / "pex-root"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(pex), "version"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pbuild ")
    # No build path leaks into the archive (reproducibility itself: test_python_rules).
    assert str(tmp_path).encode() not in pex.read_bytes()
