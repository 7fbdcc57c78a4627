"""Cold builds of two (or more) pbuild checkouts, interleaved run by run (issue 16).

    python bench/bench_compare_cold.py OLD_CHECKOUT NEW_CHECKOUT [--runs 3] [--jobs N]

bench/bench_compare.py covers the no-op and one-change figures; this is its cold counterpart: a
fresh cache and pbuild-out for every timed build of the generated 1,000-target workspace
(bench/gen_workspace.py), checkouts taken in turns (old, new, old, new, ...) so each pair sees the
same load. Quoted per checkout: the median wall time, the median CPU time (user+sys of the build
and its sandboxes, steadier than wall on a shared machine) and both per action. Each timed build's
events are checked (bench/runcheck.py): every one of its actions executed, else no figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import runcheck  # noqa: E402
from gen_workspace import generate  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", metavar="CHECKOUT", help="folders with a ./pbuild")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="--jobs for every build (default: pbuild's own)")
    args = parser.parse_args()
    actions = 1000
    with tempfile.TemporaryDirectory(prefix="pbuild-compare-cold-") as tmp:
        names = [f"{i}:{os.path.basename(os.path.normpath(c))}" for i, c in enumerate(args.checkouts)]
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.runs):
            for n, (name, checkout) in enumerate(zip(names, args.checkouts, strict=True)):
                root = os.path.join(tmp, f"ws{n}")
                cache = os.path.join(tmp, f"cache{n}")
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
                generate(root, 10, actions // 10)
                events = os.path.join(tmp, f"events{n}.jsonl")
                argv = [os.path.join(checkout, "pbuild"), "build", "//...", "--cache-dir", cache, "-q",
                        "--build-event-json", events, *(["--jobs", str(args.jobs)] if args.jobs else [])]
                before = _children_cpu()
                start = time.perf_counter()
                subprocess.run(argv, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(_children_cpu() - before)
                events_read = runcheck.expect_cold(events, f"cold, {name}, run {i + 1}")
                if len(events_read.executed()) != actions:
                    raise runcheck.WrongRunKind(f"cold, {name}", f"{actions} actions executed", events_read)
        load = os.getloadavg()[0]
        print(f"pbuild cold, {actions} targets, {args.runs} interleaved runs each (medians; load avg {load:.1f}):")
        for name in names:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            print(f"  {name:28} wall {w:6.2f} s ({w / actions * 1000:5.2f} ms/action)   "
                  f"cpu {c:6.2f} s ({c / actions * 1000:5.2f} ms/action)")


if __name__ == "__main__":
    main()
