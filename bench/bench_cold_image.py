#!/usr/bin/env python3
"""Cold `//app:image` (downloads cached) of two or more pbuild checkouts, interleaved run by run.

    .venv/bin/python bench/bench_cold_image.py OLD_CHECKOUT NEW_CHECKOUT [--runs 7] [--profile DIR]

Each checkout builds its own copy of bench_image.py's workspace with its own cache (warmed once:
the first run fetches the .debs and the wheel). Before each timed run the action-cache entries of
every action but the fetches, the workspace's memo and pbuild-out/ are deleted (as bench_image.py
does); the runs go in turns (old, new, old, new, ...) so each pair sees the same load. Every timed
run's events are checked (bench/runcheck.py: every action but the fetches executed). Printed per
checkout: the median wall and CPU (user + system of the build and its children), and the median
duration of each action from the build events. All checkouts' //app:image digests must agree,
or the script says so. ``--profile DIR`` profiles the isolated actions (DebLayer, WheelLayer)
of one more run per checkout with cProfile (``DIR/<checkout>/*.prof``).
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_image  # noqa: E402
import runcheck  # noqa: E402

WORK = HERE / "workspaces" / "cold-image"
FETCHES = bench_image.FETCHES


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _build(checkout: Path, ws: Path, cache: Path, events: Path, extra_env: dict[str, str] | None = None) -> tuple[float, float]:
    env = bench_image.pbuild_env(cache) | (extra_env or {})
    start, cpu = time.perf_counter(), _cpu()
    proc = subprocess.run([str(checkout / "pbuild"), "build", "--build-event-json", str(events), "//app:image"],
                          cwd=ws, env=env, capture_output=True, text=True, check=False)
    wall, used = time.perf_counter() - start, _cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, used


def _durations(events: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "action" and event["mnemonic"] not in FETCHES:
            out[event["mnemonic"]] = out.get(event["mnemonic"], 0.0) + event["duration_ms"] / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", type=Path, metavar="CHECKOUT", help="folders with a ./pbuild")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--profile", type=Path, metavar="DIR")
    args = parser.parse_args()
    template = bench_image.setup()  # bench/workspaces/image/ws: this checkout's app/ and third_party/
    names = [f"{i}:{c.resolve().name}" for i, c in enumerate(args.checkouts)]
    places: dict[str, tuple[Path, Path, Path, Path]] = {}
    for name, checkout in zip(names, args.checkouts, strict=True):
        folder = WORK / name.replace(":", "-")
        ws, cache = folder / "ws", folder / "cache"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(template, ws)
        places[name] = (checkout.resolve(), ws, cache, folder / "events.jsonl")
        print(f"{name}: warming the download cache...", flush=True)
        _build(checkout.resolve(), ws, cache, folder / "events.jsonl")
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    actions: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    digests: dict[str, set[str]] = {n: set() for n in names}
    for i in range(args.runs):
        for name in names:
            checkout, ws, cache, events = places[name]
            bench_image.forget_all_but_fetches(cache, events, ws)
            wall, cpu = _build(checkout, ws, cache, events)
            runcheck.expect_cold(events, f"cold //app:image ({name})", may_be_cached=FETCHES)
            walls[name].append(wall)
            cpus[name].append(cpu)
            for mnemonic, seconds in _durations(events).items():
                actions[name].setdefault(mnemonic, []).append(seconds)
            digests[name].add((ws / "pbuild-out/app/image/digest").read_text().strip())
            print(f"  run {i + 1} {name}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    for name in names:
        per_action = ", ".join(f"{m} {statistics.median(v):.3f}" for m, v in sorted(actions[name].items()))
        print(f"{name:24} wall median {statistics.median(walls[name]):.3f} s  CPU median "
              f"{statistics.median(cpus[name]):.3f} s  actions (s): {per_action}  digest {', '.join(sorted(digests[name]))}")
    if len({d for s in digests.values() for d in s}) != 1:
        print("DIGESTS DIFFER between runs or checkouts")
    if args.profile:
        for name in names:
            checkout, ws, cache, events = places[name]
            folder = args.profile / name.replace(":", "-")
            shutil.rmtree(folder, ignore_errors=True)
            bench_image.forget_all_but_fetches(cache, events, ws)
            _build(checkout, ws, cache, events, {"PBUILD_PROFILE_ISOLATED": str(folder)})
            runcheck.expect_cold(events, f"profiled cold //app:image ({name})", may_be_cached=FETCHES)
            print(f"profiles of {name}: {', '.join(sorted(p.name for p in folder.glob('*.prof')))}")


if __name__ == "__main__":
    main()
