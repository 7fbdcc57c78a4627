"""Sandbox overhead per process action: ``run_sandboxed(["/bin/true"])`` against a plain
``subprocess.run(["/bin/true"])`` (and ``bwrap`` with comparable isolation when installed).

Usage: ``python bench/bench_sandbox.py [--runs N] [--threads T]``. Prints the median of N runs
of each and the overhead (sandbox median minus plain median); the goal is <= 15 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pbuild.tools.sandbox import SandboxRequest, run_sandboxed

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": "/tmp", "PYTHONHASHSEED": "0"}


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
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

        def sandboxed() -> None:
            result = run_sandboxed(request)
            assert result.exit_code == 0 and result.error is None, result

        plain = median_ms(lambda: subprocess.run(["/bin/true"], check=True), args.runs)
        sandbox = median_ms(sandboxed, args.runs)
        print(f"plain subprocess.run(/bin/true): median {plain:6.2f} ms over {args.runs} runs")
        print(f"run_sandboxed(/bin/true):        median {sandbox:6.2f} ms over {args.runs} runs")
        print(f"sandbox overhead:                {sandbox - plain:6.2f} ms  (ratio {sandbox / plain:.1f}x; goal <= 15 ms)")
        bwrap = shutil.which("bwrap")
        if bwrap:
            argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--tmpfs", "/tmp",
                    "--proc", "/proc", "--dev", "/dev", "--bind", exec_root, "/tmp/execroot", "--chdir", "/tmp/execroot",
                    "--clearenv", "/bin/true"]  # fmt: skip
            bw = median_ms(lambda: subprocess.run(argv, check=True), args.runs)
            print(f"bwrap (same isolation) /bin/true: median {bw:6.2f} ms over {args.runs} runs (overhead {bw - plain:.2f} ms)")
        # Throughput from a thread pool, as the engine runs --jobs N actions.
        n = args.runs
        with ThreadPoolExecutor(args.threads) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: sandboxed(), range(n)))
            elapsed = time.perf_counter() - start
        print(f"{n} sandboxed runs from {args.threads} threads: {elapsed:.2f} s ({elapsed / n * 1000:.2f} ms each)")


if __name__ == "__main__":
    main()
