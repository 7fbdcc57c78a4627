"""Tests of the Python lock: the file format, the [python] config and resolving with pip."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pbuild.engine.errors import WorkspaceError
from pbuild.rules.python.config import PythonTarget
from pbuild.rules.python.lock import NoWheelError, lock_python
from pbuild.rules.python.lockfile import (
    Lock,
    LockedProject,
    PythonLockError,
    inputs_digest,
    normalize_name,
    parse_lock,
    render_lock,
)

from tests.support.wheelmaker import make_wheel, use_private_index

LOCK = "third_party/python/requirements.lock"


def _workspace(tmp_path, requirements: str, python: str = "") -> str:
    (tmp_path / "third_party/python").mkdir(parents=True)
    (tmp_path / "third_party/python/requirements.in").write_text(requirements)
    (tmp_path / "WORKSPACE.toml").write_text(python)
    return str(tmp_path)


def test_render_and_parse_round_trip():
    lock = Lock(
        inputs_sha256="ab" * 32,
        target="cp311 abi cp311 on manylinux_2_28_x86_64",
        projects=(
            LockedProject("b", "2.0", "b-2.0-py3-none-any.whl", "2" * 64, ()),
            LockedProject("a", "1.0", "a-1.0-py3-none-any.whl", "1" * 64, ("b",)),
        ),
    )
    text = render_lock(lock)
    assert text.index("a==1.0 \\") < text.index("b==2.0 \\")
    assert "http" not in text
    parsed = parse_lock(text)
    assert parsed.inputs_sha256 == lock.inputs_sha256
    assert parsed.target == lock.target
    assert parsed.by_name()["a"].requires == ("b",)
    assert sorted(parsed.projects) == sorted(lock.projects)


def test_parse_reports_every_problem_with_lines():
    text = "# pbuild-lock-version: 1\nfoo>=1\nbar==1 \\\n    --hash=md5:abc\n"
    with pytest.raises(PythonLockError) as info:
        parse_lock(text)
    message = info.value.message
    assert "line 2" in message and "foo>=1" in message
    assert "line 4" in message
    assert "pbuild-inputs-sha256" in message
    assert "pbuild lock --python" in (info.value.hint or "")


def test_inputs_digest_ignores_comments_and_blank_lines():
    assert inputs_digest("numpy\n") == inputs_digest("# the program\n\nnumpy   # arrays\n")
    assert inputs_digest("numpy\n") != inputs_digest("numpy<2\n")


def test_normalize_name():
    assert normalize_name("Typing_Extensions") == "typing-extensions"
    assert normalize_name("zope.interface") == "zope-interface"


def test_python_target_defaults_and_platform_tags():
    target = PythonTarget.from_config({})
    assert target.version == "3.11" and target.abi == "cp311"
    tags = target.platform_tags
    assert tags[0] == "manylinux_2_28_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert target.marker_environment()["platform_machine"] == "x86_64"
    arm = PythonTarget.from_config({"platform": "manylinux_2_17_aarch64"})
    assert "manylinux2014_aarch64" in arm.platform_tags and "manylinux1_aarch64" not in arm.platform_tags
    assert arm.marker_environment()["platform_machine"] == "aarch64"


def test_python_target_reports_every_bad_key():
    with pytest.raises(WorkspaceError) as info:
        PythonTarget.from_config({"version": "eleven", "implementation": "xx", "colour": "red"})
    message = info.value.message
    assert "colour" in message and "eleven" in message and "'xx'" in message


def test_lock_resolves_transitive_dependencies_for_the_target(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(str(index), "app-lib", "1.0", requires=["helper>=2", "winonly; sys_platform == 'win32'",
                                                     "extra-dep; extra == 'fancy'"])
    make_wheel(str(index), "helper", "1.5")
    make_wheel(str(index), "helper", "2.1", requires=["Leaf_Pkg"])
    make_wheel(str(index), "leaf-pkg", "0.3")
    use_private_index(monkeypatch, str(index))
    root = _workspace(tmp_path / "ws", "# comment\napp-lib\n")
    lock_python(root)
    text = (tmp_path / "ws" / LOCK).read_text()
    lock = parse_lock(text)
    projects = lock.by_name()
    assert sorted(projects) == ["app-lib", "helper", "leaf-pkg"]
    assert projects["helper"].version == "2.1"
    assert projects["app-lib"].requires == ("helper",)
    assert projects["helper"].requires == ("leaf-pkg",)
    assert projects["leaf-pkg"].filename == "leaf_pkg-0.3-py3-none-any.whl"
    assert lock.inputs_sha256 == inputs_digest("app-lib\n")
    assert str(tmp_path) not in text and "file:" not in text
    # pip itself accepts the file in hash-checking mode.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q",
         "-d", str(tmp_path / "dl"), "-r", str(tmp_path / "ws" / LOCK)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(tmp_path / "dl")) == 3


def test_lock_follows_extras_requested_by_dependents(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(str(index), "top", "1.0", requires=["base[fast]"])
    make_wheel(str(index), "base", "1.0", requires=["speedup; extra == 'fast'"])
    make_wheel(str(index), "speedup", "1.0")
    use_private_index(monkeypatch, str(index))
    root = _workspace(tmp_path / "ws", "top\n")
    lock_python(root)
    projects = parse_lock((tmp_path / "ws" / LOCK).read_text()).by_name()
    assert projects["base"].requires == ("speedup",)
    assert projects["top"].requires == ("base",)


def test_lock_without_a_wheel_for_the_target_platform_names_both(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(str(index), "winlib", "1.0", tag="cp311-cp311-win_amd64")
    use_private_index(monkeypatch, str(index))
    root = _workspace(tmp_path / "ws", "winlib\n")
    with pytest.raises(NoWheelError) as info:
        lock_python(root)
    assert "winlib" in info.value.message
    assert "manylinux_2_28_x86_64" in info.value.message
    assert not (tmp_path / "ws" / LOCK).exists()


def test_lock_resolves_for_the_configured_platform_not_the_host(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(str(index), "native", "1.0", tag="cp311-cp311-manylinux_2_17_aarch64")
    use_private_index(monkeypatch, str(index))
    root = _workspace(tmp_path / "ws", "native\n", '[python]\nplatform = "manylinux_2_28_aarch64"\n')
    lock_python(root)
    lock = parse_lock((tmp_path / "ws" / LOCK).read_text())
    assert lock.by_name()["native"].filename.endswith("manylinux_2_17_aarch64.whl")
    assert lock.target.endswith("manylinux_2_28_aarch64")


def test_lock_without_requirements_in_says_how_to_fix(tmp_path):
    (tmp_path / "WORKSPACE.toml").write_text("")
    with pytest.raises(PythonLockError) as info:
        lock_python(str(tmp_path))
    assert "requirements.in" in info.value.message
    assert "pbuild lock --python" in (info.value.hint or "")


@pytest.mark.slow
def test_lock_numpy_through_the_host_pip_configuration(tmp_path):
    root = _workspace(tmp_path, "numpy\n")
    lock_python(root)
    numpy = parse_lock((tmp_path / LOCK).read_text()).by_name()["numpy"]
    assert numpy.filename.startswith(f"numpy-{numpy.version}-cp311-cp311-manylinux")
    assert len(numpy.sha256) == 64


def test_lock_twice_gives_the_same_file(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(str(index), "alpha", "1.0", requires=["beta"])
    make_wheel(str(index), "beta", "2.0")
    use_private_index(monkeypatch, str(index))
    root = _workspace(tmp_path / "ws", "alpha\n")
    lock_python(root)
    first = (tmp_path / "ws" / LOCK).read_bytes()
    lock_python(root)
    assert (tmp_path / "ws" / LOCK).read_bytes() == first
