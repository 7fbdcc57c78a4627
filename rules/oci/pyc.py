"""Deterministic bytecode: checked-hash ``.pyc`` files (PEP 552) that are the same in every process.

A hash-based ``.pyc`` holds a hash of its source instead of an mtime, so it is identical on every
build and stays valid in an mtime-less layer. Bytecode is specific to a minor version, so it is
only written when the interpreter running pbuild has the image interpreter's ``X.Y``; otherwise
none is written and Python compiles in memory at import time.
"""

from __future__ import annotations

import importlib.util
import marshal
import pickle
import posixpath
import subprocess
import sys
import threading

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


def bytecode_tag() -> str:
    """Identifies the bytecode this interpreter writes (cache tag, magic number, exact build)."""
    return f"{sys.implementation.cache_tag}-{importlib.util.MAGIC_NUMBER.hex()}-{sys.version}"
