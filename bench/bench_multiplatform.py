#!/usr/bin/env python3
"""Issue 15's speed figure: `//app:image` for one platform against both, cold with downloads cached.

Times `./pbuild build //app:image` (the workspace's default platform, linux/amd64) and
`./pbuild build //app:image_multiplatform` (the same layers for linux/amd64 and linux/arm64, an
image index over them), median of --runs each, and prints the ratio both/single against the
issue's goal of at most 1.6 (the `.pyc` compile of the app layer and the app layer itself are
shared; each platform's Debian and wheel layers are not).

"Cold with downloads cached", as bench/bench_image.py measures it: before each timed run the
action-cache entries of every action but the fetches (DebFetch, PyFetch; their keys come from the
previous build's event log), the workspace's memo of them, and pbuild-out/ are deleted, so every
layer and image action runs again while the .debs and wheels come from the warmed cache.

Each timed build writes its events (``--build-event-json``), and before a figure is printed the
script checks them (``bench/runcheck.py``): every action but the fetches executed, among them at
least one Image, DebLayer and WheelLayer action, and the two-platform build ran more DebLayer and
WheelLayer actions than the single one (the second platform's layers were built, not taken from
somewhere). Otherwise it stops without a figure.

The workspace is a copy of this repo's app/, third_party/ and WORKSPACE.toml below
bench/workspaces/multiplatform (ignored by git). The first run needs the network (the apt mirror
and the pip index of this host), and the committed locks must cover both platforms. Usage:

    .venv/bin/python bench/bench_multiplatform.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_image  # noqa: E402
import runcheck  # noqa: E402

WORK = REPO / "bench" / "workspaces" / "multiplatform"
SINGLE, BOTH = "//app:image", "//app:image_multiplatform"
FIGURES = {SINGLE: "cold, linux/amd64 (image)", BOTH: "cold, amd64 + arm64 (image_multiplatform)"}
#: The actions a cold image build must have executed for its figure to mean what it says.
CLAIMED = ("Image", "DebLayer", "WheelLayer")
GOAL = 1.6


def check_cold(events: Path, figure: str) -> Counter[str]:
    """The run's executed mnemonics, after checking it was cold (else :class:`runcheck.WrongRunKind`)."""
    checked = runcheck.expect_cold(events, figure, may_be_cached=bench_image.FETCHES)
    executed = Counter(a.mnemonic for a in checked.executed())
    missing = [m for m in CLAIMED if not executed[m]]
    if missing:
        raise runcheck.WrongRunKind(figure, f"{', '.join(missing)} executed", checked)
    return executed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bench_image.WORK = WORK  # setup() copies the workspace below WORK
    ws = bench_image.setup()
    cache = WORK / "cache"
    events = WORK / "events.jsonl"
    env = bench_image.pbuild_env(cache)
    pbuild = bench_image.PBUILD
    print("warming the download cache (first run fetches from the network)...", flush=True)
    bench_image.run([*pbuild, "build", SINGLE, BOTH], cwd=ws, env=env)

    times: dict[str, list[float]] = {SINGLE: [], BOTH: []}
    executed: dict[str, Counter[str]] = {}
    for i in range(args.runs):
        for target in (SINGLE, BOTH):  # interleaved, so that a slower minute of the machine hits both
            bench_image.run([*pbuild, "build", "--build-event-json", str(events), target], cwd=ws, env=env)
            bench_image.forget_all_but_fetches(cache, events, ws)
            times[target].append(bench_image.run([*pbuild, "build", "--build-event-json", str(events), target],
                                                 cwd=ws, env=env, label=FIGURES[target]))
            executed[target] = check_cold(events, FIGURES[target])
            print(f"  run {i + 1} {target}: {dict(sorted(executed[target].items()))}", flush=True)
    for mnemonic in ("DebLayer", "WheelLayer"):
        if executed[BOTH][mnemonic] <= executed[SINGLE][mnemonic]:
            raise SystemExit(f"bench: refusing to report: the two-platform build ran {executed[BOTH][mnemonic]} "
                             f"{mnemonic} actions, the single one {executed[SINGLE][mnemonic]}; the second "
                             "platform's layers were not built (do the locks cover linux/arm64?)")
    print()
    for target in (SINGLE, BOTH):
        bench_image.show(FIGURES[target], times[target])
    ratio = statistics.median(times[BOTH]) / statistics.median(times[SINGLE])
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"both / single: {ratio:.2f}x (goal <= {GOAL}x: {verdict} it)")


if __name__ == "__main__":
    main()
