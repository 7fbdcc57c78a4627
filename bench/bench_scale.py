"""Large workspaces (issue 16): loading, analysis, a no-op build and `pbuild query` at 1k/10k/100k targets.

    python bench/bench_scale.py CHECKOUT [CHECKOUT ...] [--sizes 1k,10k,100k] [--runs 5]
                                [--noop-sizes 1k,10k]

Workspaces come from bench/gen_workspace.py (N/100 packages × 100 chained genrules). For each
size and each checkout, in turns (checkout A, B, A, B, ... so each pair sees the same load):

- ``load``: ``Loader.expand_patterns(["//..."])`` with no parse cache (every BUILD.toml parsed),
  in a fresh process; ``analysis``: ``Analyzer.analyze`` of those labels and the Analyzed result
  a build caches; ``pickle``: that cache's ``pickle.dumps`` and ``pickle.loads``; all three inside
  the collector pause ``analyze_for_build`` holds (where the checkout has one); ``collect``: one
  ``gc.collect()`` after, the full pass the graph costs once the collector runs again.
- ``query``: ``pbuild query //...`` and ``pbuild query 'deps(//...)'`` as commands.
- ``no-op``: ``pbuild build //...`` after a build of the same workspace (only for --noop-sizes: a
  cold 100k build takes ~20 minutes of sandboxed actions); its events are checked
  (bench/runcheck.py): refused unless no action ran. The first (cold) build's events must show
  every action executed (or, for the second checkout sharing the cache, cached).

Figures are medians of wall and CPU (user+sys of the child) time, and per target in µs; the last
column says whether time per target stays flat from the smallest size to the largest (≤ 1.25×:
"linear"). Set up each checkout once first (``CHECKOUT/pbuild version``).
"""

from __future__ import annotations

import argparse
import json
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

# Runs inside the checkout's interpreter, with its sources first on sys.path (as ./pbuild does).
_PHASES = r"""
import json, os, pickle, sys, time
sys.path[0:0] = [sys.argv[1], open(sys.argv[4]).read().strip()]
cpu = time.process_time
from pbuild.engine.build import Analyzed, BuildRequest, open_session, requested_files
from pbuild.engine.loading import ParseCache
root = sys.argv[2]
session = open_session(BuildRequest(patterns=("//...",), cwd=root, cache_dir=sys.argv[3]))
session.loader.parse_cache = ParseCache(None)
out = {}
try:  # production runs all of it inside analyze_for_build's pause (pbuild.lib.gcpause)
    from pbuild.lib.gcpause import collector_paused
except ImportError:
    import contextlib
    collector_paused = contextlib.nullcontext
import gc
pause = collector_paused()
pause.__enter__()
w, c = time.perf_counter(), cpu()
labels = session.loader.expand_patterns(["//..."], "")
out["load"] = (time.perf_counter() - w, cpu() - c)
w, c = time.perf_counter(), cpu()
graph = session.analyzer.analyze(labels)
analyzed = Analyzed(labels=labels, actions=graph.actions_for(requested_files(graph, labels)),
                    targets={l: graph.targets[l].as_target() for l in labels},
                    rule_names={l: graph.targets[l].rule.name for l in labels})
out["analysis"] = (time.perf_counter() - w, cpu() - c)
w, c = time.perf_counter(), cpu()
pickle.loads(pickle.dumps(analyzed, protocol=pickle.HIGHEST_PROTOCOL))
out["pickle"] = (time.perf_counter() - w, cpu() - c)
pause.__exit__(None, None, None)
w, c = time.perf_counter(), cpu()
gc.collect()  # what the graph costs the collector once it runs again (one full pass)
out["collect"] = (time.perf_counter() - w, cpu() - c)
out["targets"] = len(labels)
out["actions"] = len(analyzed.actions)
session.close()
print(json.dumps(out))
"""

SIZES = {"1k": 10, "10k": 100, "100k": 1000}  # packages of 100 targets


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(argv: list[str], cwd: str) -> tuple[float, float, str]:
    c = children_cpu()
    w = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return time.perf_counter() - w, children_cpu() - c, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", metavar="CHECKOUT")
    parser.add_argument("--sizes", default="1k,10k,100k")
    parser.add_argument("--noop-sizes", default="1k,10k")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR", help="generate (and keep) workspaces and caches here")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    noop_sizes = {s for s in args.noop_sizes.split(",") if s} & set(sizes)
    names = {c: f"{i}:{os.path.basename(os.path.normpath(c))}" for i, c in enumerate(args.checkouts)}
    tmp = args.keep or tempfile.mkdtemp(prefix="pbuild-scale-")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    rows: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    try:
        for size in sizes:
            packages = SIZES[size]
            root = os.path.join(tmp, f"ws{size}")
            if not os.path.exists(os.path.join(root, "WORKSPACE.toml")):
                generate(root, packages, 100)
            cache = os.path.join(tmp, f"cache{size}")
            events = os.path.join(tmp, f"events{size}.jsonl")
            targets = packages * 100
            if size in noop_sizes:
                for n, checkout in enumerate(args.checkouts):
                    build = [os.path.join(checkout, "pbuild"), "build", "//...", "--cache-dir", cache, "-q",
                             "--build-event-json", events]
                    w, c, _ = run_command(build, root)
                    checked = runcheck.BuildEvents.read(events)
                    if n == 0 and checked.executed():
                        runcheck.expect_cold(events, f"first build, {size}")
                    print(f"  {size}: first build with {names[checkout]} {w:.1f} s "
                          f"({len(checked.executed())} executed)", flush=True)
            for _ in range(args.runs):
                for checkout in args.checkouts:
                    name = names[checkout]
                    python = os.path.join(checkout, ".venv", "bin", "python")
                    src = os.path.join(checkout, ".venv", "pbuild-src")
                    done = subprocess.run([python, "-S", "-c", _PHASES, src, root, cache + ".phases",
                                           os.path.join(checkout, ".venv", ".pbuild-site")],
                                          check=True, stdout=subprocess.PIPE, text=True)
                    phases = json.loads(done.stdout)
                    if phases["targets"] != targets:
                        sys.exit(f"bench: {name} loaded {phases['targets']} targets, not {targets}")
                    for phase in ("load", "analysis", "pickle", "collect"):
                        rows.setdefault((size, name, phase), []).append(tuple(phases[phase]))
                    pbuild = os.path.join(checkout, "pbuild")
                    for phase, expr in (("query //...", "//..."), ("query deps()", "deps(//...)")):
                        w, cpu, out = run_command([pbuild, "query", expr, "--cache-dir", cache + ".q"], root)
                        want = targets
                        if len(out.splitlines()) != want:
                            sys.exit(f"bench: {name} {phase} printed {len(out.splitlines())} labels, not {want}")
                        rows.setdefault((size, name, phase), []).append((w, cpu))
                    if size in noop_sizes:
                        build = [pbuild, "build", "//...", "--cache-dir", cache, "-q", "--build-event-json", events]
                        w, cpu, _ = run_command(build, root)
                        runcheck.expect_noop(events, f"no-op, {size}, {name}")
                        rows.setdefault((size, name, "no-op"), []).append((w, cpu))
            print(f"  {size}: {args.runs} runs done", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"medians of {args.runs} interleaved runs; wall s / CPU s / CPU µs per target")
    phases = ["load", "analysis", "pickle", "collect", "query //...", "query deps()", "no-op"]
    for name in names.values():
        print(f"{name}:")
        for phase in phases:
            cells = []
            per_target = []
            for size in sizes:
                values = rows.get((size, name, phase))
                if not values:
                    cells.append(f"{size}: —")
                    continue
                wall = statistics.median(v[0] for v in values)
                cpu = statistics.median(v[1] for v in values)
                per = cpu / (SIZES[size] * 100) * 1e6
                per_target.append(per)
                cells.append(f"{size}: {wall:.3f} / {cpu:.3f} / {per:.0f}")
            growth = ""
            if len(per_target) > 1 and per_target[0] > 0:
                ratio = per_target[-1] / per_target[0]
                growth = f"  per-target x{ratio:.2f} ({'linear' if ratio <= 1.25 else 'super-linear'})"
            print(f"  {phase:13} " + "   ".join(cells) + growth)


if __name__ == "__main__":
    main()
