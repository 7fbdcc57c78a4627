"""`pbuild lock --python` for linux/amd64 and linux/arm64 against the real index (the host's pip
configuration): numpy gets a wheel per platform, a pure project one, and a project whose locked
version has no aarch64 wheel is named with the versions that have one. pip only fetches metadata
(--dry-run --report), except for the hash check of the arm64 wheels."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runner import Runner, assert_user_error, write_tree

pytestmark = pytest.mark.slow

LOCK = "third_party/python/requirements.lock"
TWO = '[platforms]\nlocks = ["linux/amd64", "linux/arm64"]\n'


def _workspace(root: Path, requirements: str) -> Path:
    write_tree(root, {"WORKSPACE.toml": '[workspace]\nname = "locks"\n' + TWO,
                      "third_party/python/requirements.in": requirements})
    return root


def test_numpy_and_a_pure_project_for_two_platforms(tmp_path: Path, pbuild: Runner):
    from pbuild.lib.platforms import Platform
    from pbuild.rules.python.config import PythonTarget
    from pbuild.rules.python.lockfile import parse_lock

    ws = _workspace(tmp_path / "ws", "numpy\npackaging\n")
    result = pbuild("lock", "--python", cwd=ws, timeout=600)
    assert result.code == 0, str(result)
    assert re.search(r"locked 2 projects for linux/amd64 .*\n.*locked 2 projects for linux/arm64", result.err)
    text = (ws / LOCK).read_text()
    lock = parse_lock(text)
    assert lock.target == "cp311 abi cp311 on manylinux_2_28 for linux/amd64 linux/arm64"
    numpy = lock.by_name()["numpy"]
    amd64, arm64 = (numpy.wheel_for(p) for p in ("linux/amd64", "linux/arm64"))
    assert amd64 is not None and arm64 is not None
    assert amd64.filename.startswith(f"numpy-{numpy.version}-cp311-cp311-") and amd64.filename.endswith("x86_64.whl")
    assert arm64.filename.startswith(f"numpy-{numpy.version}-cp311-cp311-") and arm64.filename.endswith("aarch64.whl")
    assert amd64.sha256 != arm64.sha256 and all(re.fullmatch(r"[0-9a-f]{64}", w.sha256) for w in numpy.wheels)
    packaging = lock.by_name()["packaging"]
    assert [w.platform for w in packaging.wheels] == [""] and packaging.filename.endswith("-py3-none-any.whl")
    assert "http" not in text
    # pip's hash-checking mode accepts the arm64 wheels with the lock's hashes.
    arm = PythonTarget().for_platform(Platform.parse("linux/arm64"))
    dest = tmp_path / "dl"
    check = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q",
                            *arm.pip_args(), "-d", str(dest), "-r", str(ws / LOCK)],
                           capture_output=True, text=True, check=False, timeout=600)
    assert check.returncode == 0, check.stderr
    assert sorted(os.listdir(dest)) == sorted([arm64.filename, packaging.filename])


@pytest.mark.parametrize(("requirement", "project", "version", "other"), [
    # h5py 3.11.0 published cp311 wheels for x86_64 only; 3.10 and 3.12 have aarch64 ones too. The
    # range leaves the version to the first platform: the arm64 resolution misses its constraint.
    ("h5py<3.12", "h5py", "3.11.0", "3.10.0"),
    # The same with the version pinned in requirements.in (pip says "No matching distribution").
    ("regex==2025.7.29", "regex", "2025.7.29", "2025.7.31"),
])
def test_a_version_without_an_aarch64_wheel_is_named_with_those_that_have_one(
        tmp_path: Path, pbuild: Runner, requirement: str, project: str, version: str, other: str):
    ws = _workspace(tmp_path / "ws", requirement + "\n")
    result = pbuild("lock", "--python", cwd=ws, timeout=600)
    assert_user_error(result, 2, f"{project} {version} has no wheel for linux/arm64 (manylinux_2_28_aarch64",
                      f"versions of {project} with a wheel for linux/arm64: ", other,
                      "requirements.in", "[platforms] locks")
    listed = result.err.split("with a wheel for linux/arm64: ", 1)[1].split("\n")[0]
    assert version not in [v.strip() for v in listed.split(",")]
    assert not (ws / LOCK).exists()
