"""Engine figures of issue 2: cold, no-op and one-change builds of the synthetic workspace.

    python bench/bench_engine.py [--runs 5] [--cold-runs 3] [--skip-10k] [--bazel]

Each figure is the median wall time of several fresh `./pbuild` processes (no daemon); each timed
build writes its events, checked (bench/runcheck.py) before the figure is printed: a cold build ran
every action, a no-op none, one change exactly the 10 actions of its chain. With
--bazel (and `bazel` on PATH, Debian package bazel-bootstrap), the same graph is built by Bazel in
the same run: cold, no-op with its server warm, and after one source change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PBUILD = os.path.join(REPO, "pbuild")
sys.path.insert(0, HERE)

import runcheck  # noqa: E402
from gen_workspace import generate  # noqa: E402


def timed(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median(values: list[float]) -> str:
    return (
        f"{statistics.median(values):.3f} s (n={len(values)}, min {min(values):.3f}, max {max(values):.3f})"
    )


def pbuild_figures(root: str, cache: str, runs: int, cold_runs: int) -> dict[str, list[float]]:
    events = os.path.join(os.path.dirname(cache), "events.jsonl")
    build = [PBUILD, "build", "//...", "--cache-dir", cache, "-q", "--build-event-json", events]
    figures: dict[str, list[float]] = {"cold": [], "noop": [], "one_change": []}
    for _ in range(cold_runs):
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(os.path.join(root, "pbuild-out"), ignore_errors=True)
        figures["cold"].append(timed(build, root))
        runcheck.expect_cold(events, "cold")
    for _ in range(runs):
        figures["noop"].append(timed(build, root))
        runcheck.expect_noop(events, "no-op")
    for i in range(runs):
        with open(os.path.join(root, "p3", "src50.txt"), "w") as handle:
            handle.write(f"change {i} {time.time_ns()}\n")
        figures["one_change"].append(timed(build, root))
        runcheck.expect_executed(events, "one source change", 10)  # t50..t59 of p3
        timed(build, root)  # settle (the stat index learns the fresh outputs)
    return figures


def bazel_workspace(root: str, packages: int, targets: int) -> None:
    generate(root, packages, targets)
    open(os.path.join(root, "WORKSPACE"), "w").close()
    for p in range(packages):
        lines = []
        for t in range(targets):
            srcs = f'["src{t}.txt"]' if t % 10 == 0 else f'[":t{t - 1}"]'
            lines.append(
                f'genrule(name = "t{t}", srcs = {srcs}, outs = ["t{t}.txt"], '
                f'cmd = "cat $(SRCS) > $@; echo {t} >> $@")'
            )
        with open(os.path.join(root, f"p{p}", "BUILD"), "w") as handle:
            handle.write("\n".join(lines) + "\n")


def bazel_figures(root: str, runs: int) -> dict[str, list[float]]:
    base = ["bazel", "--batch=false"]
    figures: dict[str, list[float]] = {"cold": [], "noop": [], "one_change": []}
    subprocess.run(["bazel", "shutdown"], cwd=root, capture_output=True)
    figures["cold"].append(timed(base[:1] + ["build", "//..."], root))
    for _ in range(runs):
        figures["noop"].append(timed(base[:1] + ["build", "//..."], root))
    for i in range(runs):
        with open(os.path.join(root, "p3", "src50.txt"), "w") as handle:
            handle.write(f"change {i} {time.time_ns()}\n")
        figures["one_change"].append(timed(base[:1] + ["build", "//..."], root))
    subprocess.run(["bazel", "shutdown"], cwd=root, capture_output=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--skip-10k", action="store_true")
    parser.add_argument("--bazel", action="store_true", help="also measure Bazel on the same graph")
    args = parser.parse_args()
    subprocess.run([PBUILD, "version"], check=True, stdout=subprocess.DEVNULL)  # set up .venv first
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-") as tmp:
        root = os.path.join(tmp, "ws1k")
        generate(root, 10, 100)
        figures = pbuild_figures(root, os.path.join(tmp, "cache1k"), args.runs, args.cold_runs)
        print("pbuild, 1,000 targets (10 packages x 100 chained genrules):")
        print(f"  cold              {median(figures['cold'])}")
        print(f"  no-op             {median(figures['noop'])}")
        print(f"  one source change {median(figures['one_change'])}  (10 actions)")
        if args.bazel and shutil.which("bazel"):
            broot = os.path.join(tmp, "bazel1k")
            bazel_workspace(broot, 10, 100)
            bfig = bazel_figures(broot, args.runs)
            print("bazel, same graph (server warm after the cold build):")
            for name in ("cold", "noop", "one_change"):
                print(f"  {name:17} {median(bfig[name])}")
            for name in ("cold", "noop", "one_change"):
                ratio = statistics.median(figures[name]) / statistics.median(bfig[name])
                print(f"  ratio pbuild/bazel {name}: {ratio:.2f}")
        if not args.skip_10k:
            root10 = os.path.join(tmp, "ws10k")
            generate(root10, 100, 100)
            cache10 = os.path.join(tmp, "cache10k")
            events10 = os.path.join(tmp, "events10k.jsonl")
            build = [PBUILD, "build", "//...", "--cache-dir", cache10, "-q", "--build-event-json", events10]
            cold = timed(build, root10)
            runcheck.expect_cold(events10, "cold, 10,000 targets")
            noops = []
            for _ in range(args.runs):
                noops.append(timed(build, root10))
                runcheck.expect_noop(events10, "no-op, 10,000 targets")
            print("pbuild, 10,000 targets (100 x 100):")
            print(f"  cold              {cold:.1f} s (n=1)")
            print(f"  no-op             {median(noops)}")


if __name__ == "__main__":
    main()
