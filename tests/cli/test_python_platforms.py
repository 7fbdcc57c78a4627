"""CLI tests of a Python lock for several platforms (``[platforms] locks``): locking, the py_wheel
targets it generates, and the staleness check. pip runs for real against a private index of wheels
made here (x86_64 and aarch64 builds of one native project, and a pure one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.runner import Runner, assert_user_error, write_tree
from tests.support.wheelmaker import make_wheel

LOCK = "third_party/python/requirements.lock"
X86_TAG, ARM_TAG = "cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux_2_17_aarch64"
TWO = '[platforms]\nlocks = ["linux/amd64", "linux/arm64"]\nimages = ["linux/amd64"]\n'


@pytest.fixture
def index(tmp_path: Path) -> Path:
    folder = tmp_path / "index"
    folder.mkdir()
    for tag, machine in ((X86_TAG, "x86_64"), (ARM_TAG, "aarch64")):
        make_wheel(str(folder), "native", "1.0", tag=tag, requires=["helper", "armextra; platform_machine == 'aarch64'"],
                   files={"native/__init__.py": f"MACHINE = {machine!r}\n"})
    make_wheel(str(folder), "helper", "1.0")
    make_wheel(str(folder), "armextra", "0.5", tag=ARM_TAG)
    return folder


def _env(index: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _workspace(root: Path, platforms: str) -> Path:
    write_tree(root, {
        "WORKSPACE.toml": '[workspace]\nname = "platforms"\n' + platforms,
        "third_party/python/BUILD.toml": '[requirements]\nrule = "py_requirements"\n',
        "third_party/python/requirements.in": "native\n",
        "bin/BUILD.toml": '[show]\nrule = "py_binary"\nsrcs = ["show.py"]\nmain = "show.py"\n'
                          'deps = ["//third_party/python:native"]\n',
        "bin/show.py": "import helper, native\nprint(native.MACHINE, helper.VERSION)\n",
    })
    return root


def test_lock_build_and_run_for_two_platforms(tmp_path: Path, pbuild: Runner, index: Path):
    ws = _workspace(tmp_path / "ws", TWO)
    env = _env(index)
    locked = pbuild("lock", "--python", cwd=ws, env=env)
    assert locked.code == 0, str(locked)
    assert "locked 2 projects for linux/amd64" in locked.err and "locked 3 projects for linux/arm64" in locked.err
    text = (ws / LOCK).read_text()
    assert "# pbuild-lock-version: 2" in text
    assert f"# wheel linux/arm64: native-1.0-{ARM_TAG}.whl" in text and "# wheel: helper-1.0-py3-none-any.whl" in text
    assert f"# wheel linux/arm64: armextra-0.5-{ARM_TAG}.whl" in text
    built = pbuild("build", "//third_party/python:native", "//third_party/python:helper",
                   "//third_party/python:armextra", cwd=ws, env=env)
    assert built.code == 0, str(built)
    wheels = sorted(os.listdir(ws / "pbuild-out/third_party/python/wheels"))
    assert wheels == sorted(["helper-1.0-py3-none-any.whl", f"native-1.0-{X86_TAG}.whl", f"native-1.0-{ARM_TAG}.whl",
                             f"armextra-0.5-{ARM_TAG}.whl"])
    # The arm64-only project is fetched (for arm64 images) but installed for no x86_64 program.
    assert sorted(os.listdir(ws / "pbuild-out/third_party/python/site")) == ["helper", "native"]
    # Only the primary platform's wheel is installed: the host's, x86_64 here.
    ran = pbuild("run", "//bin:show", cwd=ws, env=env)
    assert ran.code == 0, str(ran)
    assert ran.out.strip() == f"{os.uname().machine} 1.0"


def test_a_lock_for_other_platforms_names_both(tmp_path: Path, pbuild: Runner, index: Path):
    ws = _workspace(tmp_path / "ws", TWO)
    env = _env(index)
    assert pbuild("lock", "--python", cwd=ws, env=env).code == 0
    (ws / "WORKSPACE.toml").write_text('[workspace]\nname = "platforms"\n[platforms]\nlocks = ["linux/amd64"]\n')
    result = pbuild("build", "//third_party/python:native", cwd=ws, env=env)
    assert_user_error(result, 2, "the lock covers linux/amd64 linux/arm64 but WORKSPACE.toml [platforms] locks "
                                 "linux/amd64", "run ./pbuild lock --python")


def test_a_single_platform_lock_in_a_two_platform_workspace_is_stale(tmp_path: Path, pbuild: Runner, index: Path):
    ws = _workspace(tmp_path / "ws", "")
    env = _env(index)
    assert pbuild("lock", "--python", cwd=ws, env=env).code == 0
    assert "# pbuild-lock-version: 1" in (ws / LOCK).read_text()
    built = pbuild("build", "//third_party/python:native", cwd=ws, env=env)
    assert built.code == 0, str(built)
    assert os.listdir(ws / "pbuild-out/third_party/python/wheels") == [f"native-1.0-{X86_TAG}.whl"]
    (ws / "WORKSPACE.toml").write_text('[workspace]\nname = "platforms"\n' + TWO)
    result = pbuild("build", "//third_party/python:native", cwd=ws, env=env)
    assert_user_error(result, 2, "the lock covers linux/amd64 but WORKSPACE.toml [platforms] locks "
                                 "linux/amd64 linux/arm64", "run ./pbuild lock --python")


def test_a_bad_platforms_table_fails_lock_and_build(tmp_path: Path, pbuild: Runner, index: Path):
    ws = _workspace(tmp_path / "ws", '[platforms]\nlocks = ["linux/ppc64le"]\n')
    env = _env(index)
    assert_user_error(pbuild("lock", "--python", cwd=ws, env=env), 2, "linux/ppc64le", "WORKSPACE.toml")
