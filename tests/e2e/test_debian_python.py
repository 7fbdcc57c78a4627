"""A Python closure of deb_packages, left as Debian would leave it; bytecode by the tree's own interpreter.

//third_party/debian:python3 is built from the real .debs of the apt mirror. Its tree's python
compiles the standard library for the layer, and the wheel and app layers' bytecode
(``rules/oci/pyc.py``) on the toolchain tree, whatever Python runs pbuild.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pbuild.engine.api import ActionIO, Label
from pbuild.rules.debian.python import TreePython, modules_to_compile, python_links, unpack_entries
from pbuild.rules.oci import pyc
from pbuild.rules.oci.layerwriter import LayerEntry
from pbuild.tools.sandbox import SandboxRequest, run_sandboxed

from tests.support.debfixtures import DebSpec, make_keyring, serve, write_archive
from tests.support.imageclone import clone_app_workspace
from tests.support.paths import REPO, pbuild_folders
from tests.support.runner import Runner, WorkspaceFactory

PYTHON = "/usr/bin/python3.11"
TARGET = "//third_party/debian:python3"
LAYER = "pbuild-out/third_party/debian/python3"
UMASK_077 = ("sh", "-c", 'umask 077 && exec "$@"', "sh")


# ---------------------------------------------------------------------------------------------
# What is compiled and linked (no interpreter needed)


def test_python3_link_and_local_site_only_where_no_package_ships_them() -> None:
    python = TreePython(PYTHON, "3.11")
    added = python_links([LayerEntry("usr/bin/python3.11", "file", 0o755, data=b"")], python)
    assert [(e.path, e.kind, e.target) for e in added] == [
        ("usr/bin/python3", "symlink", "python3.11"),
        ("usr/local/lib/python3.11", "dir", ""),
        ("usr/local/lib/python3.11/dist-packages", "dir", ""),
    ]
    # With python3 (or python3-minimal) in the closure, its own link stays.
    shipped = [LayerEntry("usr/bin/python3", "symlink", 0o777, target="python3.11")]
    assert [e.path for e in python_links(shipped, python)] == ["usr/local/lib/python3.11",
                                                               "usr/local/lib/python3.11/dist-packages"]


def test_modules_to_compile_are_debians() -> None:
    entries = [
        LayerEntry("usr/lib/python3.11/json/__init__.py", "file", 0o644, data=b"A = 1\n"),
        LayerEntry("usr/lib/python3/dist-packages/six.py", "file", 0o644, data=b"B = 1\n"),
        LayerEntry("etc/python3.11/sitecustomize.py", "file", 0o644, data=b"C = 1\n"),
        # A link into /etc is compiled under its own name, from its target (py_compile follows it)...
        LayerEntry("usr/lib/python3.11/sitecustomize.py", "symlink", 0o777, target="/etc/python3.11/sitecustomize.py"),
        LayerEntry("usr/lib/python3.11/_sysconfigdata_m.py", "symlink", 0o777, target="json/__init__.py"),
        # ...a dangling one is not; nor are other interpreters' or non-Python files.
        LayerEntry("usr/lib/python3.11/gone.py", "symlink", 0o777, target="/nowhere.py"),
        LayerEntry("usr/lib/python3.12/x.py", "file", 0o644, data=b""),
        LayerEntry("usr/share/foo/tool.py", "file", 0o644, data=b""),
        LayerEntry("usr/lib/python3.11/LICENSE.txt", "file", 0o644, data=b""),
    ]
    got = {entry.path: source for entry, source in modules_to_compile(entries, "3.11")}
    assert got == {
        "usr/lib/python3.11/json/__init__.py": b"A = 1\n",
        "usr/lib/python3/dist-packages/six.py": b"B = 1\n",
        "usr/lib/python3.11/sitecustomize.py": b"C = 1\n",
        "usr/lib/python3.11/_sysconfigdata_m.py": b"A = 1\n",
    }


def test_unpacked_tree_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    entries = [LayerEntry("usr/bin/python3.11", "file", 0o755, data=b"x"),
               LayerEntry("usr/bin/python3", "symlink", 0o777, target="python3.11"),
               LayerEntry("etc/ro", "dir", 0o555), LayerEntry("etc/ro/f", "file", 0o644, data=b"y")]
    old = os.umask(0o077)
    try:
        unpack_entries(entries, str(tmp_path / "tree"))
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path / "tree").as_posix(): p.lstat().st_mode & 0o7777
             for p in (tmp_path / "tree").rglob("*") if not p.is_symlink()}
    assert modes == {"usr": 0o755, "usr/bin": 0o755, "usr/bin/python3.11": 0o755, "etc": 0o755, "etc/ro": 0o555,
                     "etc/ro/f": 0o644}
    assert os.readlink(tmp_path / "tree/usr/bin/python3") == "python3.11"


# ---------------------------------------------------------------------------------------------
# The real closure


@dataclass(frozen=True)
class Built:
    ws: Path
    blob: Path
    meta: Path
    tree: Path


@pytest.fixture(scope="module")
def python_layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """//third_party/debian:python3 built once (--jobs 2, umask 022) and unpacked into a tree."""
    tmp = tmp_path_factory.mktemp("python-layer")
    ws = clone_app_workspace(tmp / "ws")
    built = Runner(tmp)("build", "--jobs", "2", TARGET, cwd=ws, timeout=600, umask=0o022)
    assert built.code == 0, built
    blob, meta = ws / LAYER / "layer.tar.gz", ws / LAYER / "layer.json"
    tree = tmp / "tree"
    with tarfile.open(blob) as tar:
        tar.extractall(tree, filter="tar")
    yield Built(ws, blob, meta, tree)


def sandboxed(tree: Path, tmp: Path, *argv: str) -> str:
    """Run ``argv`` with ``tree`` as its read-only ``/``; its stdout and stderr."""
    exec_root = tmp / "execroot"
    exec_root.mkdir(exist_ok=True)
    log = tmp / "sandboxed.log"
    result = run_sandboxed(SandboxRequest(argv=argv, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                                          exec_root=str(exec_root), writable_dirs=(), workdir="", hide_paths=(),
                                          stdout_path=str(log), stderr_path=str(log), root=str(tree)))
    out = log.read_text()
    assert result.error is None and result.exit_code == 0, (result, out)
    return out


def test_python_closure_is_byte_compiled(python_layer: Built, tmp_path: Path) -> None:
    with tarfile.open(python_layer.blob) as tar:
        members = {m.name: m for m in tar.getmembers()}
        json_pyc = tar.extractfile(members["usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"])
        assert json_pyc is not None
        header = json_pyc.read(16)
    assert members["usr/bin/python3"].issym() and members["usr/bin/python3"].linkname == "python3.11"
    assert members["usr/local/lib/python3.11/dist-packages"].isdir()
    # Every module of the standard library has its bytecode, but nothing else does.
    sources = {n for n in members if n.startswith("usr/lib/python3.11/") and n.endswith(".py")}
    pycs = {n for n in members if n.endswith(".pyc")}
    assert len(sources) > 500 and {pyc.pyc_path(s, "3.11") for s in sources} == pycs
    # Hash-based and checked (PEP 552), with the tree interpreter's magic number (the check runs
    # on the tree: nothing of the host is visible there).
    assert int.from_bytes(header[4:8], "little") == pyc.PYC_FLAGS == 0b11
    magic = sandboxed(python_layer.tree, tmp_path, "/usr/bin/python3", "-c",
                      "import importlib.util, os; print(importlib.util.MAGIC_NUMBER.hex(), os.path.exists('/usr/bin/bwrap'))")
    assert magic.split() == [header[:4].hex(), "False"]


def test_tree_python_imports_from_the_pyc(python_layer: Built, tmp_path: Path) -> None:
    # -v reports each module's bytecode as "code object from <pyc>" when it is valid; a module
    # compiled from source would try to write a .pyc on the read-only root ("could not create").
    script = "import json, email.message, asyncio, decimal; print(json.__cached__)"
    out = sandboxed(python_layer.tree, tmp_path, "/usr/bin/python3", "-v", "-c", script)
    assert "/usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc\n" in out
    assert "# code object from '/usr/lib/python3.11/asyncio/__pycache__/base_events.cpython-311.pyc'" in out
    assert "could not create" not in out and "bytecode is stale" not in out, out
    loaded = [line for line in out.splitlines() if line.startswith("# code object from ")]
    assert len(loaded) > 100 and all(line.endswith(".cpython-311.pyc'") for line in loaded)


def test_layer_is_the_same_whatever_jobs_and_umask(python_layer: Built, tmp_path: Path) -> None:
    ws = clone_app_workspace(tmp_path / "other clone")
    built = Runner(tmp_path)("build", "--jobs", "1", TARGET, cwd=ws, timeout=600, prefix=UMASK_077)
    assert built.code == 0, built
    assert json.loads((ws / LAYER / "layer.json").read_bytes()) == json.loads(python_layer.meta.read_bytes())
    assert (ws / LAYER / "layer.tar.gz").read_bytes() == python_layer.blob.read_bytes()


# ---------------------------------------------------------------------------------------------
# rules/oci/pyc.py on the toolchain tree, under several pbuild Pythons

_COMPILE = """
import pickle, sys
from pbuild.engine.api import ActionIO, Label
from pbuild.rules.oci import pyc
from pbuild.rules.oci.layerwriter import LayerEntry
tree, tmp = sys.argv[1], sys.argv[2]
io = ActionIO({}, {}, tmp, Label.parse("//app:image"), jobs=2, toolchain_root=tree)
entries = [LayerEntry(f"app/m{i}.py", "file", 0o644, data=f"X = [{i}, '.', {{'k'}}]\\n".encode()) for i in range(100)]
out = pyc.add_pyc(entries, io=io, python="/usr/bin/python3.11", python_version="3.11", jobs=2)
sys.stdout.buffer.write(pickle.dumps([(e.path, e.data) for e in out]))
"""


def _other_pythons() -> list[str]:
    """CPythons other than the one running the tests (pyenv's; pbuild needs 3.11 or later)."""
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = []
    for minor in (11, 12, 13):
        if (3, minor) == sys.version_info[:2]:
            continue
        found += sorted(str(p) for p in versions.glob(f"3.{minor}.*/bin/python3.{minor}"))[-1:]
    return found


def test_bytecode_is_the_toolchains_whatever_python_runs_pbuild(python_layer: Built, tmp_path: Path) -> None:
    others = _other_pythons()
    assert others, "needs a second CPython (pyenv's 3.12 or 3.13)"
    src = tmp_path / "src/pbuild"  # pbuild's packages, as ./pbuild lays them out for its venv
    src.mkdir(parents=True)
    for part in pbuild_folders():
        (src / part).symlink_to(REPO / part)
    results = {}
    for python in [sys.executable, *others]:
        work = tmp_path / f"work-{len(results)}"
        work.mkdir()
        proc = subprocess.run([python, "-c", _COMPILE, str(python_layer.tree), str(work)], capture_output=True,
                              env={"PYTHONPATH": str(src.parent), "PATH": os.environ["PATH"]}, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        results[python] = pickle.loads(proc.stdout)
    first = results[sys.executable]
    assert len([p for p, _ in first if p.endswith(".cpython-311.pyc")]) == 100
    assert all(result == first for result in results.values()), list(results)
    # The toolchain's 3.11 magic number, though some of those Pythons are 3.12 or 3.13.
    with tarfile.open(python_layer.blob) as tar:
        handle = tar.extractfile("usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc")
        assert handle is not None
        magic = handle.read(4)
    assert all(data[:4] == magic for path, data in first if path.endswith(".pyc"))


def test_without_a_toolchain_bytecode_only_from_the_same_python(tmp_path: Path) -> None:
    io = ActionIO({}, {}, str(tmp_path), Label.parse("//app:image"))
    entries = [LayerEntry("m.py", "file", 0o644, data=b"X = 1\n")]
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert [e.path for e in pyc.add_pyc(entries, io=io, python=sys.executable, python_version=here)] == [
        "m.py", f"__pycache__/m.{sys.implementation.cache_tag}.pyc"]
    assert pyc.add_pyc(entries, io=io, python="/usr/bin/python3.99", python_version="3.99") == entries
    assert pyc.host_bytecode_key("3.99") is False and sys.version in str(pyc.host_bytecode_key(here))


def test_a_python_that_cannot_start_is_a_message(workspace: WorkspaceFactory, pbuild: Runner, tmp_path: Path) -> None:
    # A closure whose interpreter is not a program (here: four bytes) cannot compile its stdlib.
    home = tmp_path / "gnupg"
    keyring = make_keyring(home)
    specs = [DebSpec("python3.11-minimal", version="3.11.2-6", files={"usr/bin/python3.11": b"\x7fELF",
                                                                      "usr/lib/python3.11/os.py": b"X = 1\n"},
                     modes={"usr/bin/python3.11": 0o755})]
    write_archive(tmp_path / "archive", "bookworm", specs, gnupg_home=home)
    ws = workspace({"third_party/debian/BUILD.toml": '[base]\nrule = "deb_packages"\npackages = ["python3.11-minimal"]\n'})
    with serve(tmp_path / "archive") as url:
        env = {"PBUILD_DEBIAN_MIRROR": url, "PBUILD_DEBIAN_KEYRING": str(keyring)}
        assert pbuild("lock", "--debian", cwd=ws, env=env).code == 0
        result = pbuild("build", "//third_party/debian:base", cwd=ws, env=env)
    assert result.code == 1 and "Traceback" not in result.err, result
    assert "cannot compile bytecode with /usr/bin/python3.11 of the toolchain" in result.err, result
    assert "//third_party/debian:base" in result.err and "libc6" in result.err, result
    assert not (ws / "pbuild-out/third_party/debian/base/layer.tar.gz").exists()


def test_scratch_tree_falls_back_to_the_action_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pbuild.rules.debian import python

    monkeypatch.setattr(python, "MEMORY_FOLDERS", (str(tmp_path / "absent"),))
    folder = python.scratch_folder(str(tmp_path), 1000)
    assert os.path.dirname(folder) == str(tmp_path) and os.listdir(folder) == []
    monkeypatch.setattr(python, "MEMORY_FOLDERS", (str(tmp_path / "memory"),))
    (tmp_path / "memory").mkdir()
    inside = python.scratch_folder(str(tmp_path / "tmp"), 1000)
    assert os.path.dirname(inside) == str(tmp_path / "memory")
    # A tree larger than a quarter of the free space goes to the disk.
    free = os.statvfs(tmp_path / "memory")
    big = python.scratch_folder(str(tmp_path), free.f_bavail * free.f_frsize)
    assert os.path.dirname(big) == str(tmp_path)
