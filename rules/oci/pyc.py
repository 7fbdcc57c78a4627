"""Deterministic bytecode: hash-based ``.pyc`` files (PEP 552) compiled by the image's own interpreter.

A hash-based ``.pyc`` holds a hash of its source instead of an mtime, so it is identical on every
build and stays valid in an mtime-less layer. Bytecode belongs to one interpreter build (magic
number, code object layout, even constant folding), so it is compiled by the interpreter that
will load it: the toolchain's, run through :meth:`~pbuild.engine.api.ActionIO.run_sandboxed` on
the toolchain tree. The Python that runs pbuild never changes a byte of it.

Without a toolchain tree (an image whose interpreter pbuild did not build: ``interpreter =``, a
pulled base) bytecode is written as before pbuild had toolchains, by the running interpreter,
and only when it has the image interpreter's ``X.Y``; otherwise none is written and Python
compiles in memory at import time. That output depends on the host: :func:`host_bytecode_key`
puts the host interpreter's identity into the action key.

This is the one compiler of layer entries: the image's own modules and wheels, and the Debian
standard library (``rules/debian/python.py``). A folder an action writes on disk (a
``py_library`` tree, an installed wheel) is compiled in place by
:mod:`pbuild.rules.python.bytecode` instead; its ``.pyc`` files name modules relative to that
folder, which goes onto ``sys.path`` wherever it is put.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import pickle
import posixpath
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pbuild.engine.api import ActionIO
from pbuild.engine.errors import PbuildError
from pbuild.rules.oci.layerwriter import LayerEntry

#: PEP 552 flags word: bit 0 "hash-based", bit 1 "check_source" (checked: the importer reads the
#: source and compares its hash; unchecked: it trusts the .pyc). Measured on the //app:image tree
#: (CPython 3.11, numpy 2.4, medians of 40 runs, CPU time): `import numpy` 188.7 ms checked
#: against 187.3 ms unchecked, bare start-up 14.7 ms both: the check costs under 1%, and with it
#: a .py that a layer above (or a bind mount) replaces runs its new source, not stale bytecode.
PYC_FLAGS = 0b11

#: Written and read by the compiling interpreter, which may be another Python than pbuild's.
_PICKLE_PROTOCOL = 4

#: A bytecode worker, run by the interpreter the bytecode is for: compiles the (source, in-image
#: path) pairs pickled in argv[1] and pickles the .pyc bytes (None: does not compile) to argv[2].
#: Interning every one-character Latin-1 string first makes marshal's output independent of what
#: else ran in the process (marshal writes a string as "interned" when the *object* is, and
#: CPython shares those strings as singletons).
_WORKER = """\
import importlib.util, marshal, pickle, sys
for i in range(256):
    sys.intern(chr(i))
FLAGS = @FLAGS@
def pyc(source, path):
    try:
        code = compile(source, path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return None
    return (importlib.util.MAGIC_NUMBER + FLAGS.to_bytes(4, "little") + importlib.util.source_hash(source)
            + marshal.dumps(code))
with open(sys.argv[1], "rb") as handle:
    work = pickle.load(handle)
with open(sys.argv[2], "wb") as handle:
    pickle.dump([pyc(s, p) for s, p in work], handle, protocol=@PROTOCOL@)
""".replace("@FLAGS@", str(PYC_FLAGS)).replace("@PROTOCOL@", str(_PICKLE_PROTOCOL))

#: Fewer modules than this per worker process cost more in start-up than they save.
_MIN_BATCH = 48


class BytecodeError(PbuildError):
    """The toolchain's interpreter could not compile bytecode (it does not start, or crashed)."""


def _batches(work: list[tuple[bytes, str]], jobs: int) -> list[list[tuple[bytes, str]]]:
    """Split ``work`` into at most ``jobs`` runs of consecutive modules (each of at least
    :data:`_MIN_BATCH` modules) holding about the same number of source bytes.

    Compile time follows the source's size, not the module count: cut by count, the standard
    library's two halves took 0.47 and 0.65 CPU-seconds, and the first worker waited for the
    second. Each module is compiled on its own, so the split never changes the output.
    """
    count = max(1, min(jobs, len(work) // _MIN_BATCH))
    if count == 1:
        return [work]
    total = sum(len(source) for source, _ in work)
    batches: list[list[tuple[bytes, str]]] = []
    start, seen = 0, 0
    for index, (source, _) in enumerate(work):
        seen += len(source)
        left = count - len(batches) - 1  # batches still to cut after this one
        # Cut once this batch has its share, keeping enough modules for the batches after it.
        if (left and seen * count >= total * (len(batches) + 1) and index + 1 - start >= _MIN_BATCH
                and len(work) - (index + 1) >= left * _MIN_BATCH):
            batches.append(work[start:index + 1])
            start = index + 1
    batches.append(work[start:])
    return batches


def compile_on_toolchain(io: ActionIO, work: list[tuple[bytes, str]], *, python: str,
                         root: str | None = None, jobs: int = 1) -> list[bytes | None]:
    """The ``.pyc`` bytes of each ``(source, in-image path)``, compiled by ``python`` on a tree.

    ``python`` is the interpreter's absolute path inside ``root`` (default: the action's
    toolchain tree), which the worker sees as its read-only ``/``; each of up to ``jobs``
    workers gets an exec root of its own below ``io.tmpdir`` holding its batch.
    """
    if not work:
        return []
    batches = _batches(work, jobs)

    def run(index: int, batch: list[tuple[bytes, str]]) -> list[bytes | None]:
        exec_root = os.path.join(io.tmpdir, f"pyc-{index}")
        os.makedirs(os.path.join(exec_root, "out"))
        with open(os.path.join(exec_root, "work.pickle"), "wb") as handle:
            pickle.dump(batch, handle, protocol=_PICKLE_PROTOCOL)
        log = os.path.join(io.tmpdir, f"pyc-{index}.log")
        # No -E/-I: the sandbox's environment is the whole environment, and -E would drop its
        # PYTHONHASHSEED=0. -S: no site (nothing of the tree's site-packages is needed).
        hint = ("the toolchain's Python must start: check that its deb_packages closure holds the "
                "interpreter and its libraries (libc6 and the libpython3.X packages)")
        try:
            code = io.run_sandboxed([python, "-S", "-s", "-B", "-X", "utf8", "-c", _WORKER,
                                     "/execroot/work.pickle", "/execroot/out/pyc.pickle"],
                                    exec_root=exec_root, stdout_path=log, stderr_path=log, writable_dirs=("out",),
                                    root=root)
        except PbuildError as exc:
            raise BytecodeError(f"cannot compile bytecode with {python} of the toolchain: {exc.message}",
                                hint=hint) from None
        if code != 0:
            with open(log, "rb") as handle:
                tail = handle.read()[-2000:].decode("utf-8", "replace").strip()
            raise BytecodeError(f"{python} of the toolchain failed compiling bytecode (exit code {code})"
                                + (f":\n{tail}" if tail else ""), hint=hint)
        with open(os.path.join(exec_root, "out", "pyc.pickle"), "rb") as handle:
            result: list[bytes | None] = pickle.load(handle)
        if len(result) != len(batch):
            raise BytecodeError(f"{python} of the toolchain returned {len(result)} results for {len(batch)} modules",
                                hint="report this as a pbuild bug")
        return result

    with ThreadPoolExecutor(len(batches)) as pool:
        done = list(pool.map(run, range(len(batches)), batches))
    return [pyc for batch in done for pyc in batch]


# ---------------------------------------------------------------------------------------------
# The host fallback: the running interpreter, when it is the image interpreter's X.Y


def _canonical_interning() -> None:
    """Intern every one-character Latin-1 string, as :data:`_WORKER` does (see there why)."""
    for code in range(256):
        sys.intern(chr(code))


_canonical_interning()


def host_can_compile_for(python_version: str) -> bool:
    """Whether the interpreter running pbuild writes bytecode that ``python_version`` (``"3.11"``) loads."""
    return python_version == f"{sys.version_info[0]}.{sys.version_info[1]}"


def host_bytecode_key(python_version: str) -> str | bool:
    """What of the running interpreter the host fallback's bytecode depends on (False: none is written)."""
    if not host_can_compile_for(python_version):
        return False
    return f"{sys.implementation.cache_tag}-{importlib.util.MAGIC_NUMBER.hex()}-{sys.version}"


def pyc_bytes(source: bytes, path: str) -> bytes | None:
    """A hash-based ``.pyc`` (PEP 552) for ``source`` compiled by the running interpreter.

    None for a source that does not compile (real wheels ship test fixtures with deliberate
    syntax errors; the interpreter would fail on them at import as well).
    """
    try:
        code = compile(source, path, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return None
    return (importlib.util.MAGIC_NUMBER + PYC_FLAGS.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def compile_on_host(work: list[tuple[bytes, str]], *, jobs: int = 1) -> list[bytes | None]:
    """:func:`pyc_bytes` for each ``(source, in-image path)``, in order.

    Compiling holds the GIL, so large sets are split over ``jobs`` fresh ``python -S`` worker
    processes (not forked: the engine has threads).
    """
    if jobs <= 1 or len(work) < 2 * _MIN_BATCH:
        return [pyc_bytes(source, path) for source, path in work]
    batches = _batches(work, jobs)
    procs = []
    for batch in batches[1:]:
        proc = subprocess.Popen([sys.executable, "-S", "-s", "-B", "-X", "utf8", "-c", _HOST_WORKER],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env={"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"})
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


#: :data:`_WORKER` over stdin and stdout, for the host's own interpreter.
_HOST_WORKER = _WORKER.replace("sys.argv[1]", "0").replace('open(sys.argv[2], "wb")', "open(1, \"wb\")")


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    with proc.stdin:
        proc.stdin.write(data)


# ---------------------------------------------------------------------------------------------
# Layers


def cache_tag(python_version: str) -> str:
    """``"3.11"`` → ``cpython-311`` (``sys.implementation.cache_tag`` of that CPython)."""
    major, _, minor = python_version.partition(".")
    return f"cpython-{major}{minor}"


def pyc_path(py_path: str, python_version: str) -> str:
    """``a/b/c.py`` → ``a/b/__pycache__/c.cpython-311.pyc`` for ``python_version`` 3.11."""
    directory, base = posixpath.split(py_path)
    return posixpath.join(directory, "__pycache__", f"{base[:-3]}.{cache_tag(python_version)}.pyc")


#: ``bytecode`` settings: compile every module, all but test packages, or none.
BYTECODE_MODES = ("skip-tests", "all", "none")
_TEST_DIRS = frozenset({"tests", "test"})


def is_test_module(path: str) -> bool:
    """A module inside a ``tests``/``test`` package (shipped by many wheels, never imported by apps)."""
    return not _TEST_DIRS.isdisjoint(path.split("/")[:-1])


def compile_pycs(io: ActionIO | None, work: list[tuple[bytes, str]], *, python: str, python_version: str,
                 jobs: int = 1) -> list[bytes | None] | None:
    """Bytecode for each ``(source, in-image path)`` by the image's interpreter ``python``.

    On the action's toolchain tree when it has one; else by the running interpreter if it is the
    image's ``X.Y`` (the host fallback); else None (no bytecode can be written).
    """
    if io is not None and io.toolchain_root is not None:
        return compile_on_toolchain(io, work, python=python, jobs=jobs)
    if host_can_compile_for(python_version):
        return compile_on_host(work, jobs=jobs)
    return None


def add_pyc(entries: list[LayerEntry], *, io: ActionIO | None, python: str, python_version: str,
            jobs: int = 1, mode: str = "all") -> list[LayerEntry]:
    """``entries`` plus a ``.pyc`` beside every ``.py`` that compiles (see :func:`compile_pycs`).

    ``mode`` is one of :data:`BYTECODE_MODES`; modules without bytecode still import (Python
    compiles them in memory).
    """
    if mode == "none":
        return entries
    modules = [e for e in entries if e.kind == "file" and e.path.endswith(".py")
               and not (mode == "skip-tests" and is_test_module(e.path))]
    work = [(e.data if e.data is not None else _read(e.source), "/" + e.path) for e in modules]
    results = compile_pycs(io, work, python=python, python_version=python_version, jobs=jobs)
    if results is None:
        return entries
    return list(entries) + pyc_entries(modules, results, python_version)


def pyc_entries(modules: Sequence[LayerEntry], results: Sequence[bytes | None],
                python_version: str) -> list[LayerEntry]:
    """The ``__pycache__`` entries for the compiled ``modules`` (None results are skipped)."""
    return [LayerEntry(pyc_path(entry.path, python_version), "file", 0o644, data=pyc,
                       origin=f"bytecode of {entry.origin}")
            for entry, pyc in zip(modules, results, strict=True) if pyc is not None]


def _read(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as handle:
        return handle.read()
