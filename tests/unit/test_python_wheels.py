"""Unit tests of the wheel actions (fetch, verify, install), staging and the launcher script."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pbuild.engine.api import ActionIO, Label
from pbuild.engine.errors import HashMismatch
from pbuild.rules.python.bootstrap import render_bootstrap
from pbuild.rules.python.config import PythonTarget
from pbuild.rules.python.library import stage_tree
from pbuild.rules.python.wheels import (
    NoWheelForPlatform,
    fetch_wheel,
    install_wheel,
    sha256_file,
    verify_wheel,
)

from tests.support.wheelmaker import make_wheel, use_private_index

LABEL = Label("third_party/python", "demo")
SOURCE = "def pick(x):\n    return x in {'a', 'b', 'c', 'd', 'e'}\n"  # a frozenset constant


def _io(tmp: Path, inputs: dict[str, str], outputs: dict[str, str]) -> ActionIO:
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    return ActionIO(inputs, outputs, str(scratch), LABEL)


def _fetch_params(wheel: str, sha256: str) -> dict[str, object]:
    return {"name": "demo", "version": "1.0", "filename": os.path.basename(wheel), "sha256": sha256,
            "pip_args": PythonTarget().pip_args(), "platform": "manylinux_2_28_x86_64", "output": "out.whl"}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_verify_wheel_names_the_file_and_both_hashes(tmp_path: Path):
    wheel = make_wheel(str(tmp_path), "demo", "1.0")
    actual = sha256_file(wheel)
    verify_wheel(wheel, expected_sha256=actual, expected_filename=os.path.basename(wheel))
    with pytest.raises(HashMismatch) as info:
        verify_wheel(wheel, expected_sha256="0" * 64, expected_filename=os.path.basename(wheel), label=LABEL)
    assert "demo-1.0-py3-none-any.whl" in info.value.message
    assert actual in info.value.message and "0" * 64 in info.value.message
    assert "pbuild lock --python" in (info.value.hint or "")


def test_fetch_downloads_through_pip_and_checks_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    index = tmp_path / "index"
    index.mkdir()
    wheel = make_wheel(str(index), "demo", "1.0")
    use_private_index(monkeypatch, str(index))
    out = tmp_path / "out.whl"
    fetch_wheel(_io(tmp_path, {}, {"out.whl": str(out)}), _fetch_params(wheel, sha256_file(wheel)))
    assert out.read_bytes() == Path(wheel).read_bytes()


def test_fetch_refuses_a_wheel_with_another_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    index = tmp_path / "index"
    index.mkdir()
    wheel = make_wheel(str(index), "demo", "1.0")
    use_private_index(monkeypatch, str(index))
    out = tmp_path / "out.whl"
    with pytest.raises(HashMismatch) as info:
        fetch_wheel(_io(tmp_path, {}, {"out.whl": str(out)}), _fetch_params(wheel, "f" * 64))
    assert sha256_file(wheel) in info.value.message and "f" * 64 in info.value.message
    assert not out.exists()


def test_fetch_without_a_wheel_for_the_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    index = tmp_path / "index"
    index.mkdir()
    wheel = make_wheel(str(index), "demo", "1.0", tag="cp311-cp311-macosx_11_0_arm64")
    use_private_index(monkeypatch, str(index))
    with pytest.raises(NoWheelForPlatform) as info:
        fetch_wheel(_io(tmp_path, {}, {"out.whl": str(tmp_path / "o")}), _fetch_params(wheel, sha256_file(wheel)))
    assert "demo==1.0" in info.value.message and "manylinux_2_28_x86_64" in info.value.message


def _install(tmp: Path, wheel: str, name: str, seed: str) -> Path:
    out = tmp / name / "site"
    out.parent.mkdir()
    io = _io(tmp / name, {"w.whl": wheel}, {"site": str(out)})
    os.environ["PYTHONHASHSEED"] = seed  # the parent's seed must not matter
    try:
        install_wheel(io, {"wheel": "w.whl", "output": "site",
                           "python_version": f"{sys.version_info.major}.{sys.version_info.minor}"})
    finally:
        del os.environ["PYTHONHASHSEED"]
    return out


def test_install_is_importable_compiled_with_hash_pycs_and_reproducible(tmp_path: Path):
    wheel = make_wheel(str(tmp_path), "demo", "1.0", files={"demo/__init__.py": SOURCE, "demo/sub/x.py": "X = 1\n"})
    first = _install(tmp_path, wheel, "one", "1")
    second = _install(tmp_path, wheel, "two", "2")
    tree = _tree(first)
    assert tree == _tree(second)
    pyc = tree[f"demo/__pycache__/__init__.cpython-{sys.version_info.major}{sys.version_info.minor}.pyc"]
    flags = int.from_bytes(pyc[4:8], "little")
    assert flags & 1, "not a hash-based pyc"
    assert str(tmp_path).encode() not in pyc
    assert "demo-1.0.dist-info/RECORD" in tree
    proc = subprocess.run([sys.executable, "-s", "-S", "-c", "import demo, demo.sub.x; print(demo.pick('c'))"],
                          cwd=first, capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "True", proc.stderr


def test_stage_tree_places_sources_at_import_paths_and_compiles(tmp_path: Path):
    src = tmp_path / "engine" / "cli.py"
    src.parent.mkdir()
    src.write_text(SOURCE)
    out = tmp_path / "tree"
    io = _io(tmp_path, {"engine/cli.py": str(src)}, {"tree": str(out)})
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stage_tree(io, {"files": [["pbuild/engine/cli.py", "engine/cli.py"]], "output": "tree", "python_version": version})
    assert (out / "pbuild/engine/cli.py").read_text() == SOURCE
    pycs = list((out / "pbuild/engine/__pycache__").iterdir())
    assert len(pycs) == 1
    flags = int.from_bytes(pycs[0].read_bytes()[4:8], "little")
    assert flags == 0b11, "first-party pycs are checked against their source's hash"


def test_launcher_is_strict_about_sys_path(tmp_path: Path):
    root = tmp_path / "ws"
    (root / "out/runfiles/app").mkdir(parents=True)
    (root / "out/site/lib").mkdir(parents=True)
    (root / "out/runfiles/app/main.py").write_text(
        "import sys, lib\nprint(lib.X)\ntry:\n    import leaked\nexcept ImportError:\n    print('strict')\n"
        "print(sys.argv[1:])\n")
    (root / "out/site/lib/__init__.py").write_text("X = 'from-site'\n")
    leak = tmp_path / "leak"
    leak.mkdir()
    (leak / "leaked.py").write_text("")
    text = render_bootstrap(label="//app:main", self_path="out/main.bootstrap.py", runfiles="out/runfiles",
                            sites=["out/site"], mode="module", target="app.main")
    (root / "out/main.bootstrap.py").write_text(text)
    proc = subprocess.run([sys.executable, "-s", "-S", str(root / "out/main.bootstrap.py"), "a", "b"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(leak)}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["from-site", "strict", "['a', 'b']"]


def test_launcher_entry_point_exit_code(tmp_path: Path):
    root = tmp_path / "ws"
    (root / "r/tool").mkdir(parents=True)
    (root / "r/tool/cli.py").write_text("def main():\n    print('ran')\n    return 4\n")
    text = render_bootstrap(label="//t:t", self_path="t.bootstrap.py", runfiles="r", sites=[],
                            mode="entry_point", target="tool.cli:main")
    (root / "t.bootstrap.py").write_text(text)
    proc = subprocess.run([sys.executable, "-s", "-S", str(root / "t.bootstrap.py")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 4 and proc.stdout == "ran\n", proc.stderr
    assert hashlib.sha256(text.encode()).hexdigest() == hashlib.sha256(
        render_bootstrap(label="//t:t", self_path="t.bootstrap.py", runfiles="r", sites=[],
                         mode="entry_point", target="tool.cli:main").encode()).hexdigest()
