"""Installing wheels into image layer entries with installer, with deterministic hash-based .pyc."""

from __future__ import annotations

import base64
import hashlib
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

from pbuild.rules.oci import pyc, wheels
from pbuild.rules.oci.layerwriter import LayerEntry

SITE = "/usr/local/lib/python3.11/dist-packages"
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def make_wheel(root: Path, name: str = "demo", version: str = "1.0") -> Path:
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}/cli.py": b"def main():\n    print('cli ran')\n",
        f"{name}/tests/bad_syntax.py": b"def broken(:\n",
        f"{name}/tests/test_ok.py": b"def test_ok():\n    pass\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{name}-{version}.dist-info/entry_points.txt": f"[console_scripts]\n{name}-cli = {name}.cli:main\n".encode(),
    }
    record = []
    for member, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    path = root / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_, data in files.items():
            archive.writestr(name_, data)
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_install_entries(tmp_path: Path) -> None:
    entries = wheels.wheel_entries(str(make_wheel(tmp_path)), site_packages=SITE, interpreter="/usr/bin/python3.11",
                                   python_version=VERSION)
    by_path = {e.path: e for e in entries}
    assert "usr/local/lib/python3.11/dist-packages/demo/__init__.py" in by_path
    script = by_path["usr/local/bin/demo-cli"]
    assert script.mode == 0o755 and script.data is not None and script.data.startswith(b"#!/usr/bin/python3.11")
    record = by_path["usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/RECORD"].data or b""
    assert b"../../../bin/demo-cli,sha256=" in record
    assert by_path["usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/INSTALLER"].data == b"pbuild\n"
    tag = sys.implementation.cache_tag
    pyc = by_path[f"usr/local/lib/python3.11/dist-packages/demo/__pycache__/__init__.{tag}.pyc"].data or b""
    assert pyc[4:8] == b"\x03\x00\x00\x00"  # checked hash-based (PEP 552)
    # A module that does not compile gets no .pyc (and does not stop the layer).
    assert not any("bad_syntax" in p and p.endswith(".pyc") for p in by_path)


def test_bytecode_modes(tmp_path: Path) -> None:
    wheel = str(make_wheel(tmp_path))

    def pycs(mode: str) -> set[str]:
        entries = wheels.wheel_entries(wheel, site_packages="/s", interpreter="/p", python_version=VERSION,
                                       bytecode=mode)
        return {e.path.split("/__pycache__/")[1].split(".")[0] for e in entries if e.path.endswith(".pyc")}

    assert pycs("all") == {"__init__", "cli", "test_ok"}
    assert pycs("skip-tests") == {"__init__", "cli"}
    assert pycs("none") == set()
    assert pyc.is_test_module("numpy/tests/test_x.py") and not pyc.is_test_module("numpy/testing/x.py")


def test_bytecode_is_identical_across_processes_and_jobs(tmp_path: Path) -> None:
    sources = [LayerEntry(f"m/mod{i}.py", "file", 0o644, data=f"X = {i}\ndef f():\n    return {{'k': {i}}}\n".encode())
               for i in range(80)]
    one = pyc.add_pyc(sources, io=None, python="/p", python_version=VERSION, jobs=1)
    two = pyc.add_pyc(sources, io=None, python="/p", python_version=VERSION, jobs=2)
    assert [(e.path, e.data) for e in one] == [(e.path, e.data) for e in two]
    assert len(one) == 160


def test_bytecode_does_not_depend_on_the_calling_process() -> None:
    # One-character strings are shared singletons whose "interned" mark marshal records; code
    # elsewhere in a process may intern them. Bytecode made here (a process that imported a lot)
    # must equal bytecode made in fresh worker processes.
    sources = [(f"X{i} = ['.', '-', '\u00e9', '{i}', 'a b']\nif X{i}: pass\n".encode(), f"/m{i}.py")
               for i in range(2 * 48)]
    here = pyc.compile_on_host(sources, jobs=1)
    split = pyc.compile_on_host(sources, jobs=2)  # half of them compiled in a worker process
    assert here == split
    fresh = subprocess.run(
        [sys.executable, "-S", "-c", pyc._HOST_WORKER], input=pickle.dumps(sources), capture_output=True, check=True)
    assert pickle.loads(fresh.stdout) == here


def test_no_bytecode_for_another_python() -> None:
    sources = [LayerEntry("m.py", "file", 0o644, data=b"X = 1\n")]
    assert pyc.add_pyc(sources, io=None, python="/p", python_version="3.99") == sources


def test_pyc_is_used_by_the_interpreter(tmp_path: Path) -> None:
    entries = wheels.wheel_entries(str(make_wheel(tmp_path)), site_packages="/site", interpreter=sys.executable,
                                   python_version=VERSION)
    root = tmp_path / "root"
    for entry in entries:
        path = root / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.data or b"")
    # `python -v` says "code object from <pyc>" only when it loads the cached bytecode as valid.
    out = subprocess.run([sys.executable, "-B", "-v", "-c", "import demo; print(demo.VALUE)"],
                         env={"PYTHONPATH": str(root / "site")}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "42"
    pyc = root / "site/demo/__pycache__" / f"__init__.{sys.implementation.cache_tag}.pyc"
    assert f"code object from '{pyc}'" in out.stderr


def test_bytecode_batches_share_the_source_bytes() -> None:
    # One big module among small ones: a split by count would give one worker nearly everything.
    work = [(b"x = 1\n" * (20000 if i == 10 else 10), f"/m{i}.py") for i in range(200)]
    batches = pyc._batches(work, 2)
    assert [item for batch in batches for item in batch] == work  # consecutive runs, in order
    assert len(batches) == 2
    assert all(len(batch) >= pyc._MIN_BATCH for batch in batches)
    sizes = [sum(len(source) for source, _ in batch) for batch in batches]
    assert sizes[0] >= sizes[1]  # the cut comes as soon as the first batch holds its share
    assert pyc._batches(work[:50], 4) == [work[:50]]  # too few modules for two workers
    even = [(b"y = 2\n", f"/e{i}.py") for i in range(400)]
    assert [len(batch) for batch in pyc._batches(even, 4)] == [100, 100, 100, 100]
