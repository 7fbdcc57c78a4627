"""Install a wheel into image layer entries, in memory, with ``installer`` and hash-based .pyc files.

The destination is the image interpreter's ``dist-packages`` (Debian's ``sys.path`` has
``/usr/local/lib/python3.X/dist-packages`` for software that apt does not manage, which is
where ``pip`` would put it too). Console scripts go to ``/usr/local/bin`` with the image
interpreter in their shebang.

Bytecode: ``.pyc`` files are checked-hash based (PEP 552): their header holds a hash of the
source instead of its mtime, so they are identical on every build and still valid when an
mtime-less layer is unpacked. They are only written when the interpreter running pbuild has the
image interpreter's ``X.Y`` (bytecode is specific to a minor version); otherwise none are
written and Python compiles in memory at import time.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import marshal
import pickle
import posixpath
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from installer import install
from installer.destinations import WheelDestination
from installer.records import Hash, RecordEntry
from installer.scripts import Script
from installer.sources import WheelFile
from installer.utils import Scheme, construct_record_file, fix_shebang
from pbuild.rules.oci import determinism
from pbuild.rules.oci.layerwriter import LayerEntry


def can_compile_for(python_version: str) -> bool:
    """Whether this interpreter writes bytecode that ``python_version`` (``"3.11"``) loads."""
    return python_version == f"{sys.version_info[0]}.{sys.version_info[1]}"


def _canonical_interning() -> None:
    """Intern every one-character Latin-1 string (CPython shares them as singletons).

    ``marshal`` writes a string as "interned" when the string *object* is interned, and whether a
    shared singleton such as ``"."`` is interned depends on whatever else ran in the process. With
    all of them interned up front, bytecode is the same in every process: the engine, a worker,
    another machine with the same interpreter build.
    """
    for code in range(256):
        sys.intern(chr(code))


_canonical_interning()

_COMPILE = """
def _pyc(source, path):
    try:
        code = compile(source, path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return None
    return importlib.util.MAGIC_NUMBER + (3).to_bytes(4, "little") + importlib.util.source_hash(source) \\
        + marshal.dumps(code)
"""

#: A bytecode worker: compiles the (source, in-image path) pairs it reads as a pickle from stdin.
_WORKER = (
    "import importlib.util, marshal, pickle, sys\n"
    "for i in range(256):\n    sys.intern(chr(i))\n"
    + _COMPILE
    + "sys.stdout.buffer.write(pickle.dumps([_pyc(s, p) for s, p in pickle.load(sys.stdin.buffer)]))\n"
)


def pyc_bytes(source: bytes, path: str) -> bytes | None:
    """A checked-hash ``.pyc`` (PEP 552) for ``source``, recording ``path`` as the code's file name.

    None for a source that does not compile (real wheels ship test fixtures with deliberate
    syntax errors; the interpreter would fail on them at import as well).
    """
    try:
        code = compile(source, path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return None
    return (importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")  # flags: hash-based, checked
            + importlib.util.source_hash(source) + marshal.dumps(code))


def compile_pycs(work: list[tuple[bytes, str]], *, jobs: int = 1) -> list[bytes | None]:
    """:func:`pyc_bytes` for each ``(source, in-image path)``, in order.

    Compiling holds the GIL, so large sets are split over ``jobs`` fresh ``python -I -S``
    worker processes (not forked: the engine has threads). Thanks to
    :func:`_canonical_interning` the bytes are the same wherever a module is compiled, so the
    split never changes the output.
    """
    if jobs <= 1 or len(work) < 2 * _MIN_BATCH:
        return [pyc_bytes(source, path) for source, path in work]
    count = max(1, min(jobs, len(work) // _MIN_BATCH))
    share = -(-len(work) // count)
    batches = [work[i:i + share] for i in range(0, len(work), share)]
    procs = []
    for batch in batches[1:]:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-X", "utf8", "-c", _WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env={"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"})
        feeder = threading.Thread(target=_feed, args=(proc, pickle.dumps(batch)))
        feeder.start()
        procs.append((proc, feeder))
    results = [pyc_bytes(source, path) for source, path in batches[0]]  # this process takes a share too
    for proc, feeder in procs:
        output = proc.stdout.read() if proc.stdout else b""
        feeder.join()
        if proc.wait() != 0:
            raise RuntimeError(f"bytecode worker failed with exit code {proc.returncode}")
        results += pickle.loads(output)
    return results


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    with proc.stdin:
        proc.stdin.write(data)


#: Fewer modules than this per worker process cost more in start-up than they save.
_MIN_BATCH = 48


def pyc_path(py_path: str) -> str:
    """``a/b/c.py`` → ``a/b/__pycache__/c.cpython-311.pyc`` (the running interpreter's tag)."""
    directory, base = posixpath.split(py_path)
    tag = sys.implementation.cache_tag
    return posixpath.join(directory, "__pycache__", f"{base[:-3]}.{tag}.pyc")


#: ``bytecode`` settings: compile every module, all but test packages, or none.
BYTECODE_MODES = ("skip-tests", "all", "none")
_TEST_DIRS = frozenset({"tests", "test"})


def is_test_module(path: str) -> bool:
    """A module inside a ``tests``/``test`` package (shipped by many wheels, never imported by apps)."""
    return not _TEST_DIRS.isdisjoint(path.split("/")[:-1])


def add_pyc(entries: list[LayerEntry], *, python_version: str, jobs: int = 1,
            mode: str = "all") -> list[LayerEntry]:
    """``entries`` plus a ``.pyc`` beside every ``.py`` (when this interpreter can compile for the image).

    ``mode`` is one of :data:`BYTECODE_MODES`; modules without bytecode still import (Python
    compiles them in memory). See :func:`compile_pycs` for why and how compilation happens in
    worker processes.
    """
    if mode == "none" or not can_compile_for(python_version):
        return entries
    modules = [e for e in entries if e.kind == "file" and e.path.endswith(".py")
               and not (mode == "skip-tests" and is_test_module(e.path))]
    work = [(e.data if e.data is not None else _read(e.source), "/" + e.path) for e in modules]
    results = compile_pycs(work, jobs=jobs)
    out = list(entries)
    for entry, pyc in zip(modules, results, strict=True):
        if pyc is not None:
            out.append(LayerEntry(pyc_path(entry.path), "file", 0o644, data=pyc, origin=f"bytecode of {entry.origin}"))
    return out


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as handle:
        return handle.read()


class LayerDestination(WheelDestination):
    """An ``installer`` destination that keeps files as layer entries instead of writing a disk."""

    def __init__(self, schemes: dict[str, str], interpreter: str, origin: str) -> None:
        self.schemes = {k: v.strip("/") for k, v in schemes.items()}
        self.interpreter = interpreter
        self.origin = origin
        self.entries: list[LayerEntry] = []

    def _path(self, scheme: Scheme, path: str) -> str:
        full = posixpath.normpath(posixpath.join(self.schemes[scheme], path))
        if not (full + "/").startswith(self.schemes[scheme] + "/"):
            raise ValueError(f"wheel file {path} escapes its scheme {scheme}")
        return full

    def _write(self, scheme: Scheme, path: str, data: bytes, executable: bool) -> RecordEntry:
        mode = determinism.EXEC_MODE if executable else determinism.FILE_MODE
        self.entries.append(LayerEntry(self._path(scheme, path), "file", mode, data=data, origin=self.origin))
        digest = hashlib.sha256(data).digest()
        encoded = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
        return RecordEntry(path, Hash("sha256", encoded), len(data))

    def write_script(self, name: str, module: str, attr: str, section: Any) -> RecordEntry:
        script_name, data = Script(name, module, attr, section).generate(self.interpreter, "posix")
        return self._write(Scheme("scripts"), script_name, data, True)

    def write_file(self, scheme: Scheme, path: Any, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        path_ = str(path)
        if scheme == "scripts":
            with fix_shebang(stream, self.interpreter) as fixed:
                return self._write(scheme, path_, fixed.read(), True)
        return self._write(scheme, path_, stream.read(), is_executable)

    def finalize_installation(self, scheme: Scheme, record_file_path: str,
                              records: Iterable[tuple[Scheme, RecordEntry]]) -> None:
        def prefix_for_scheme(file_scheme: str) -> str | None:
            if file_scheme == scheme:
                return None
            return posixpath.relpath("/" + self.schemes[file_scheme], "/" + self.schemes[scheme]) + "/"

        with construct_record_file(list(records), prefix_for_scheme) as stream:
            self._write(scheme, record_file_path, stream.read(), False)


def image_schemes(site_packages: str, prefix: str = "/usr/local", python_version: str = "3.11") -> dict[str, str]:
    """The install scheme inside the image (pip's ``posix_local`` layout on Debian)."""
    return {
        "purelib": site_packages,
        "platlib": site_packages,
        "scripts": f"{prefix}/bin",
        "data": prefix,
        "headers": f"{prefix}/include/python{python_version}",
    }


def wheel_entries(wheel_path: str, *, site_packages: str, interpreter: str, python_version: str,
                  origin: str = "", jobs: int = 1, bytecode: str = "all") -> list[LayerEntry]:
    """The files of ``wheel_path`` installed for the image, with bytecode."""
    destination = LayerDestination(image_schemes(site_packages, python_version=python_version), interpreter,
                                   origin or posixpath.basename(wheel_path))
    with WheelFile.open(Path(wheel_path)) as source:
        # INSTALLER names the tool; REQUESTED is left out: which wheels were asked for is the lock's business.
        install(source, destination, {"INSTALLER": b"pbuild\n"})
    return add_pyc(destination.entries, python_version=python_version, jobs=jobs, mode=bytecode)


def bytecode_tag() -> str:
    """Identifies the bytecode this interpreter writes (cache tag, magic number, exact build)."""
    return f"{sys.implementation.cache_tag}-{importlib.util.MAGIC_NUMBER.hex()}-{sys.version}"
