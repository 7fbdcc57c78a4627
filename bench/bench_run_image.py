"""`./pbuild run //app:image` end to end against `podman run` of the same image (issues 5, 16).

    python bench/bench_run_image.py [--runs 10] [CHECKOUT...]

Builds //app:image once in each CHECKOUT (default: this one), loads its docker-archive into
podman, then runs, turn by turn, each checkout's `./pbuild run //app:image` and podman's (each
prints 18), and reports medians of the wall time and of the CPU time (user+sys of the command
and every process it waited for: steadier than wall on a shared machine). pbuild's figure is a
no-op build, the launch and the program; podman's is its launch and the program. Give
a checkout of main and a worktree to compare a change with its base in the same run.

The figure is "nothing to rebuild", checked for each checkout: after the timed runs one more
`pbuild run --build-event-json` must replay its build with no action executed (bench/runcheck.py;
a checkout older than the replay writes no events, and says so), and no timed run may have
rebuilt the image (its digest file keeps its identity). Every checkout's image must have the
same digest: a change that speeds up the run must not change the image's bytes. The exited
containers the timed runs leave (no --rm, as typed) are removed at the end.
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
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import runcheck  # noqa: E402

PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--rm", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=1024:1024"]
GOAL = 0.3  # issue 16: pbuild run <= 0.3 x podman run


def timed(argv: list[str], cwd: str) -> tuple[float, float]:
    """Wall and CPU seconds (user+sys, children included) of ``argv``, which must print 18."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or out.strip() != "18":
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode} and printed {out!r}, not 18: {err}")
    return elapsed, usage.ru_utime + usage.ru_stime


def check_noop(checkout: str, name: str, tmp: str) -> str:
    """One more run with the build's events written: none may have executed."""
    events = os.path.join(tmp, f"events-{name}.json")
    subprocess.run([os.path.join(checkout, "pbuild"), "run", "--build-event-json", events, "//app:image"],
                   cwd=checkout, check=True, capture_output=True)
    if not os.path.exists(events):
        return "events: this checkout replays none on the fast path (checked by the digest file only)"
    found = runcheck.expect_noop(events, f"pbuild run //app:image, {name}")
    return f"events: {dict(found.statuses())}"


def left_behind(checkouts: list[str]) -> list[str]:
    """The exited containers of the checkouts' images (each `pbuild run` without --rm keeps its
    container, as Docker does): the bench removes them when done, and no one else's."""
    sys.path.insert(0, os.path.join(REPO, ".venv", "pbuild-src"))  # as ./pbuild maps the package
    from pbuild.tools.launcher.state import ContainerStore

    prefixes = tuple(f"oci:{c}/pbuild-out/" for c in checkouts)
    return [s.id for s in ContainerStore().all() if s.status == "exited" and s.image.startswith(prefixes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", metavar="CHECKOUT", help="folders with a ./pbuild (default: this one)")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    checkouts = {f"{i}:{os.path.basename(os.path.normpath(c))}": os.path.abspath(c)
                 for i, c in enumerate(args.checkouts or [REPO])}
    digests: dict[str, str] = {}
    for name, checkout in checkouts.items():
        subprocess.run([os.path.join(checkout, "pbuild"), "build", "//app:image", "-q"], cwd=checkout, check=True)
        with open(os.path.join(checkout, "pbuild-out/app/image/digest")) as f:
            digests[name] = f.read().strip()
    if len(set(digests.values())) != 1:
        raise SystemExit(f"bench: refusing to report: the checkouts' images differ: {digests}")
    first = next(iter(checkouts.values()))
    loaded = subprocess.run(["podman", "load", "-i", os.path.join(first, "pbuild-out/app/image/image.tar")],
                            check=True, capture_output=True, text=True).stdout
    image = loaded.strip().splitlines()[-1].split(": ", 1)[-1]
    commands = {name: ([os.path.join(c, "pbuild"), "run", "//app:image"], c) for name, c in checkouts.items()}
    commands["podman"] = ([*PODMAN_RUN, image], REPO)
    existing = set(left_behind(list(checkouts.values())))
    for argv, cwd in commands.values():
        timed(argv, cwd)  # records the run plan; podman's first start warms its storage
    stats = {name: os.stat(os.path.join(c, "pbuild-out/app/image/digest")) for name, c in checkouts.items()}
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (argv, cwd) in commands.items():
            wall, cpu = timed(argv, cwd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-run-") as tmp:
        notes = {name: check_noop(c, name, tmp) for name, c in checkouts.items()}
    # The figure is `pbuild run` as typed (no --rm): remove the containers it left afterwards.
    left = sorted(set(left_behind(list(checkouts.values()))) - existing)
    if left:
        subprocess.run([os.path.join(REPO, "pbuild"), "rm", *left], check=True, capture_output=True)
    for name, c in checkouts.items():
        after = os.stat(os.path.join(c, "pbuild-out/app/image/digest"))
        if (stats[name].st_ino, stats[name].st_mtime_ns) != (after.st_ino, after.st_mtime_ns):
            raise SystemExit(f"bench: refusing to report: //app:image was rebuilt in {c} during the timed runs")
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, interleaved; image {digests[name]}")
    peer_wall, peer_cpu = statistics.median(walls["podman"]), statistics.median(cpus["podman"])
    for name in commands:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        label = "podman --runtime runc run" if name == "podman" else f"./pbuild run //app:image [{name}]"
        line = f"{label:44} wall median {wall:.3f} s (min {min(walls[name]):.3f})  cpu median {cpu:.3f} s"
        if name != "podman":
            line += f"  ratio wall {wall / peer_wall:.2f} cpu {cpu / peer_cpu:.2f} (goal <= {GOAL})"
            line += f"\n    {notes[name]}"
        print(line)


if __name__ == "__main__":
    main()
