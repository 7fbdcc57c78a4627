"""No-op and one-change builds of two (or more) pbuild checkouts, interleaved run by run.

    python bench/bench_compare.py OLD_CHECKOUT NEW_CHECKOUT [--runs 25] [--budget 20G]

On a shared machine, figures taken minutes apart differ by more than most changes cost; taken in
turns (old, new, old, new, ...) on copies of one generated workspace (bench/gen_workspace.py,
1,000 targets), each pair sees the same load. ``--budget SIZE`` adds the last checkout once more
with ``[cache] max_size = SIZE`` in a user config of its own (the size budget's after-build cost,
issue 13). Each timed build's events are checked (bench/runcheck.py): a no-op ran nothing, a one
change exactly its 10 actions. Set up each checkout once first (``CHECKOUT/pbuild version``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import runcheck  # noqa: E402
from gen_workspace import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", metavar="CHECKOUT", help="folders with a ./pbuild")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--budget", metavar="SIZE", help="also run the last checkout with this max_size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbuild-compare-") as tmp:
        variants: dict[str, tuple[str, dict[str, str]]] = {}
        for i, checkout in enumerate(args.checkouts):
            variants[f"{i}:{os.path.basename(os.path.normpath(checkout))}"] = (checkout, {})
        if args.budget:
            config = os.path.join(tmp, "config", "pbuild")
            os.makedirs(config)
            with open(os.path.join(config, "config.toml"), "w") as handle:
                handle.write(f'[cache]\nmax_size = "{args.budget}"\n')
            variants[f"{len(variants)}:budget {args.budget}"] = (args.checkouts[-1],
                                                                {"XDG_CONFIG_HOME": os.path.dirname(config)})
        roots = {}
        for n, (name, (checkout, extra)) in enumerate(variants.items()):
            root = os.path.join(tmp, f"ws{n}")
            generate(root, 10, 100)
            env = {**os.environ, **extra}
            events = os.path.join(tmp, f"events{n}.jsonl")
            argv = [os.path.join(checkout, "pbuild"), "build", "//...", "--cache-dir", os.path.join(tmp, f"cache{n}"),
                    "-q", "--build-event-json", events]
            subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            roots[name] = (root, argv, env, events)
        times: dict[str, dict[str, list[float]]] = {name: {"noop": [], "one": []} for name in variants}
        for i in range(args.runs):
            for kind in ("noop", "one"):
                for name, (root, argv, env, events) in roots.items():
                    if kind == "one":
                        with open(os.path.join(root, "p3", "src50.txt"), "w") as handle:
                            handle.write(f"change {i} {time.time_ns()}\n")
                    start = time.perf_counter()
                    subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                    times[name][kind].append(time.perf_counter() - start)
                    if kind == "noop":
                        runcheck.expect_noop(events, f"no-op, {name}")
                    else:
                        runcheck.expect_executed(events, f"one source change, {name}", 10)
        print(f"pbuild, 1,000 targets, {args.runs} interleaved runs each (medians):")
        for name, figures in times.items():
            print(f"  {name:28} no-op {statistics.median(figures['noop']):.3f} s   "
                  f"one source change {statistics.median(figures['one']):.3f} s")


if __name__ == "__main__":
    main()
