"""`./pbuild run //app:image` end to end against `podman run` of the same image (issue 5).

    python bench/bench_run_image.py [--runs 10]

Builds //app:image once, loads its docker-archive into podman, then alternates the two
commands (each prints 18) and reports medians of the wall time. pbuild's figure is a no-op build,
the launch and the program; podman's is its launch and the program.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--rm", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=1024:1024"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=REPO, check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - start
    if out.strip() != "18":
        raise SystemExit(f"{' '.join(argv)} printed {out!r}, not 18")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    pbuild = os.path.join(REPO, "pbuild")
    subprocess.run([pbuild, "build", "//app:image", "-q"], cwd=REPO, check=True)
    loaded = subprocess.run(["podman", "load", "-i", os.path.join(REPO, "pbuild-out/app/image/image.tar")],
                            check=True, capture_output=True, text=True).stdout
    image = loaded.strip().splitlines()[-1].split(": ", 1)[-1]
    timed([pbuild, "run", "//app:image"])  # records the run plan
    timed([*PODMAN_RUN, image])  # podman's first start warms its storage
    # The figure is "nothing to rebuild": a run that rebuilt or re-materialized the image would
    # replace its digest file (run with --build-event-json would leave the fast path, so the
    # check is the file's identity instead of the events).
    digest = os.path.join(REPO, "pbuild-out/app/image/digest")
    before = os.stat(digest)
    ours, theirs = [], []
    for _ in range(args.runs):
        ours.append(timed([pbuild, "run", "//app:image"]))
        theirs.append(timed([*PODMAN_RUN, image]))
    after = os.stat(digest)
    if (before.st_ino, before.st_mtime_ns) != (after.st_ino, after.st_mtime_ns):
        raise SystemExit("bench: refusing to report: //app:image was rebuilt during the timed runs")
    mine, peer = statistics.median(ours), statistics.median(theirs)
    print(f"./pbuild run //app:image     median {mine:.3f} s over {args.runs} runs (min {min(ours):.3f})")
    print(f"podman --runtime runc run    median {peer:.3f} s over {args.runs} runs (min {min(theirs):.3f})")
    print(f"ratio pbuild/podman: {mine / peer:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
