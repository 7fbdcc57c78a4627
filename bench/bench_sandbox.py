"""Sandbox overhead per process action: ``run_sandboxed(["/bin/true"])`` against a plain
``subprocess.run(["/bin/true"])`` (and ``bwrap`` with comparable isolation when installed).

Usage: ``python bench/bench_sandbox.py [--runs N] [--threads T]``. Prints the median of N runs
of each and the overhead (sandbox median minus plain median); the goal is <= 15 ms. In the same
run, each backend runs the action on a toolchain root (a small merged-/usr tree of host programs,
``tests/support/hosttree.py``, or with ``--tree DIR`` a real unpacked toolchain such as
``<cache>/toolchains/<digest>``) against the host root; the goal is toolchain <= host + 2 ms.

No pbuild build is timed, so the premises are checked on the sandboxes themselves before any
figure is printed (bench/runcheck.py's ``refuse``): every sandboxed contender exits 0 with no
sandbox error on each run, and, run once untimed with ``ls -a /`` instead of ``/bin/true``, each
"toolchain root" contender lists the tree's own top-level entries and each host-root one the
host's folders (``--tree`` must hold an ``ls``), so a root the backend ignored cannot pass for one it used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))

import runcheck  # noqa: E402
from pbuild.tools.sandbox import SandboxRequest, run_sandboxed

from tests.support.hosttree import build_tree  # noqa: E402 - after the path above

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": "/tmp", "PYTHONHASHSEED": "0"}


def medians_ms(contenders: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median wall time of each contender; runs are interleaved so that drift of the machine
    (other load, frequency changes) hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # warm up
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def cpu_ms(fn: Callable[[], object], runs: int) -> float:
    """CPU time (user + system, of us and our children) per run: unlike wall time, this does
    not depend on what else the machine is doing."""
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        fn()
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = sum(a.ru_utime - b.ru_utime + a.ru_stime - b.ru_stime for a, b in zip(after, before, strict=True))
    return spent / runs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tree", help="a toolchain tree to use instead of the small one built here "
                                       "(e.g. the shell toolchain unpacked in the cache's toolchains/)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exec_root = os.path.join(tmp, "execroot")
        os.makedirs(os.path.join(exec_root, "out"))
        request = SandboxRequest(
            argv=("/bin/true",),
            env=ENV,
            exec_root=exec_root,
            writable_dirs=("out",),
            workdir="",
            hide_paths=(os.path.expanduser("~"),),
            stdout_path=os.path.join(tmp, "stdout"),
            stderr_path=os.path.join(tmp, "stderr"),
        )

        tree = args.tree or str(build_tree(Path(tmp) / "toolchain"))

        def sandboxed(backend: str = "auto", root: str | None = None) -> None:
            result = run_sandboxed(dataclasses.replace(request, backend=backend, root=root))
            if result.exit_code != 0 or result.error is not None:
                raise runcheck.refuse(f"run_sandboxed, backend={backend}", "/bin/true exiting 0", f"it gave {result}")

        def listing(backend: str, root: str | None) -> set[str]:
            """``ls -a /`` in the sandbox: which root it really ran on."""
            result = run_sandboxed(dataclasses.replace(request, argv=("ls", "-a", "/"), backend=backend, root=root))
            if result.exit_code != 0 or result.error is not None:
                raise runcheck.refuse(f"backend={backend}, {'toolchain' if root else 'host'} root",
                                      "`ls -a /` in the sandbox to show its root",
                                      f"it gave {result}: {Path(request.stderr_path).read_text()[-500:]}")
            return set(Path(request.stdout_path).read_text().split()) - {".", ".."}

        def check_roots(backend: str) -> None:
            """The toolchain-root contender runs on the tree, the host-root one on the host."""
            on_tree, on_host = listing(backend, tree), listing(backend, None)
            # the host's folders: the sandbox's host root shows those, not files at the top of /
            wanted_tree = set(os.listdir(tree))
            wanted_host = {n for n in os.listdir("/") if os.path.isdir(os.path.join("/", n))}
            if not wanted_tree <= on_tree or on_tree == on_host:
                raise runcheck.refuse(f"backend={backend}, toolchain root", f"the tree's root {sorted(wanted_tree)}",
                                      f"`ls -a /` listed {sorted(on_tree)}")
            if not wanted_host <= on_host:
                raise runcheck.refuse(f"backend={backend}, host root", f"the host's root {sorted(wanted_host)}",
                                      f"`ls -a /` listed {sorted(on_host)}")

        contenders: dict[str, Callable[[], object]] = {
            "plain subprocess.run(/bin/true)": lambda: subprocess.run(["/bin/true"], check=True),
            "run_sandboxed(/bin/true)": sandboxed,
            "  backend=fork": lambda: sandboxed("fork"),
            "  backend=fork, toolchain root": lambda: sandboxed("fork", tree),
        }
        bwrap = shutil.which("bwrap")
        if bwrap:
            # Comparable isolation: all namespaces, host root read-only, fresh /tmp, /proc, /dev.
            argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--tmpfs", "/tmp",
                    "--proc", "/proc", "--dev", "/dev", "--bind", exec_root, "/tmp/execroot",
                    "--chdir", "/tmp/execroot", "--clearenv", "/bin/true"]  # fmt: skip
            contenders["  backend=bwrap"] = lambda: sandboxed("bwrap")
            contenders["  backend=bwrap, toolchain root"] = lambda: sandboxed("bwrap", tree)
            contenders["bare bwrap, similar isolation"] = lambda: subprocess.run(argv, check=True)
        for backend in ("fork", "bwrap") if bwrap else ("fork",):
            check_roots(backend)
        result = medians_ms(contenders, args.runs)
        cpu = {name: cpu_ms(fn, max(10, args.runs // 5)) for name, fn in contenders.items()}
        plain = result["plain subprocess.run(/bin/true)"]
        for name, value in result.items():
            print(
                f"{name:36} median {value:6.2f} ms over {args.runs} runs (overhead {value - plain:6.2f} ms), "
                f"CPU {cpu[name]:5.2f} ms per run"
            )
        sandbox = result["run_sandboxed(/bin/true)"]
        print(
            f"sandbox overhead: {sandbox - plain:.2f} ms (goal <= 15 ms); ratio to plain {sandbox / plain:.1f}x"
        )
        for backend in ("fork", "bwrap") if bwrap else ("fork",):
            host, on_tree = result[f"  backend={backend}"], result[f"  backend={backend}, toolchain root"]
            print(
                f"{backend}: toolchain root {on_tree:.2f} ms vs host root {host:.2f} ms: "
                f"{on_tree - host:+.2f} ms (goal <= +2 ms)"
            )
        # Throughput from a thread pool, as the engine runs --jobs N actions.
        n = args.runs
        with ThreadPoolExecutor(args.threads) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: sandboxed(), range(n)))
            elapsed = time.perf_counter() - start
        print(
            f"{n} sandboxed runs from {args.threads} threads: {elapsed:.2f} s ({elapsed / n * 1000:.2f} ms each)"
        )


if __name__ == "__main__":
    main()
