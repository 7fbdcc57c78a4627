"""Remote execution figures of issue 14: genrules built locally and through BuildGrid with two
``pbuild worker``s on this machine, in the same run.

    python bench/bench_remote_exec.py [--runs 3] [--packages 10] [--targets 100] [--jobs 2]
                                      [--chain 100] [--workers 2]

Each run builds, with a per-run salt in the sources so that no run finds another's results in
BuildGrid's action cache:

1. **the graph**: bench_engine's synthetic workspace (PACKAGES chains of TARGETS genrules, every
   tenth reading a source: 10 x 100 = 1,000 actions), cold here with ``-j JOBS``, then cold with
   ``--remote-executor -j JOBS`` (the client keeps up to max(JOBS, 16) remote actions in flight;
   the workers have one slot each, WORKERS = JOBS by default); the overhead per remote action is
   ``(remote wall - local wall) * JOBS / actions``: with JOBS actions running at once on both
   sides, each extra second of wall is JOBS seconds of action time;
2. **the chain**: one chain of ``--chain`` genrules, each reading the previous output, so one
   action runs at a time and nothing hides the latency of a remote action.

Both builds must write the same bytes, and every remote action must be ``remote_executed``. Also
printed: the CPU that BuildGrid's server and PostgreSQL spend per action (from /proc, less what
they burn idle over the same time), the bytes the client uploads per action, and the median of
the workers' own part of an action (fetch, sandbox, upload), from their log lines. These are the
inputs of the scale estimate in docs/remote-execution.md. The servers are tests/support/peers.py's.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PBUILD = str(REPO / "pbuild")
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))  # the tests package: its support helpers start the peers

import runcheck  # noqa: E402
from gen_workspace import generate  # noqa: E402

from tests.support.peers import buildgrid_execution_server, postgres_server  # noqa: E402
from tests.support.workers import WorkerProcess, workers  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")
_SERVER_PROCESSES = ("bgd server", "postgres")
_LEASE = re.compile(r"exit 0 in (\d+) ms")
_UP = re.compile(r"remote: .*?([\d.]+) (MB|B) up")


def _cpu_seconds() -> float:
    """User+system CPU so far of BuildGrid's server and every PostgreSQL process."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not any(name in cmdline for name in _SERVER_PROCESSES):
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _graph(root: Path, packages: int, targets: int, salt: str) -> Path:
    generate(str(root), packages, targets)
    for src in root.glob("p*/src*.txt"):
        src.write_text(src.read_text() + f"run {salt}\n")
    return root


def _chain(root: Path, count: int, salt: str) -> Path:
    (root / "chain").mkdir(parents=True)
    (root / "WORKSPACE.toml").write_text('[workspace]\nname = "bench"\n')
    rules = []
    for i in range(count):
        srcs = "[]" if i == 0 else f'[":s{i - 1}"]'
        first = f"echo {salt}" if i == 0 else "cat $<"
        rules.append(f'[s{i}]\nrule = "genrule"\nsrcs = {srcs}\nouts = ["s{i}.txt"]\ncmd = "{first} > $@; echo {i} >> $@"\n')
    (root / "chain/BUILD.toml").write_text("\n".join(rules))
    return root


def _outputs(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws / "pbuild-out").rglob("*.txt"))}


def _build(ws: Path, cache: Path, jobs: int, *extra: str) -> tuple[float, Path, int]:
    """(wall seconds, event file, bytes uploaded to the remote)."""
    events = cache.parent / f"{cache.name}.events.json"
    argv = [PBUILD, "build", "//...", "-j", str(jobs), "--cache-dir", str(cache), "--build-event-json", str(events),
            *extra]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ws, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    up = _UP.search(done.stderr)
    uploaded = 0 if up is None else int(float(up.group(1)) * (1e6 if up.group(2) == "MB" else 1))
    return wall, events, uploaded


def _expect_remote(events: Path, figure: str) -> None:
    found = runcheck.BuildEvents.read(events)
    if not found.summary or not found.actions or any(a.status != "remote_executed" for a in found.actions):
        raise runcheck.WrongRunKind(figure, "every action executed remotely", found)


def _pair(scratch: Path, name: str, make: object, jobs: int, url: str) -> tuple[float, float, float, int]:
    """Local then remote cold build of the workspace ``make(root)`` writes: (local s, remote s,
    server CPU s beyond idle, bytes uploaded)."""
    local_ws, remote_ws = make(scratch / f"{name}-local"), make(scratch / f"{name}-remote")  # type: ignore[operator]
    local, events, _ = _build(local_ws, scratch / f"{name}-cache-local", jobs)
    runcheck.expect_cold(events, f"{name} local cold")
    idle_start, idle_cpu = time.perf_counter(), _cpu_seconds()
    time.sleep(2.0)
    idle_rate = (_cpu_seconds() - idle_cpu) / (time.perf_counter() - idle_start)
    cpu_before = _cpu_seconds()
    remote, events, uploaded = _build(remote_ws, scratch / f"{name}-cache-remote", jobs, "--remote-executor", url)
    cpu = _cpu_seconds() - cpu_before - idle_rate * remote
    _expect_remote(events, f"{name} remote cold")
    if _outputs(local_ws) != _outputs(remote_ws):
        raise SystemExit(f"{name}: the remote build wrote other bytes than the local one")
    return local, remote, cpu, uploaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=10)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--chain", type=int, default=100, help="length of the one-at-a-time chain (0: skip)")
    parser.add_argument("--jobs", type=int, default=2, help="actions in flight, locally and remotely (default 2)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    actions = args.packages * args.targets
    figures: dict[str, list[float]] = {k: [] for k in (
        "graph_local_s", "graph_remote_s", "graph_overhead_ms_per_action", "chain_local_ms_per_action",
        "chain_remote_ms_per_action", "chain_overhead_ms_per_action", "server_cpu_ms_per_action",
        "upload_bytes_per_action", "worker_ms_per_action")}
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-rexec-") as tmp:
        scratch = Path(tmp)
        (scratch / "w").mkdir()
        names = tuple(f"w{i + 1}" for i in range(args.workers))
        with postgres_server(scratch / "pg") as pg, buildgrid_execution_server(scratch / "bg", pg) as grid, \
                workers(scratch / "w", grid.url, names) as pool:
            for run in range(args.runs):
                salt = f"{run}-{time.time_ns()}"
                lines_before = sum(len(w.lease_lines()) for w in pool)
                local, remote, cpu, uploaded = _pair(
                    scratch, f"graph{run}", functools.partial(_graph, packages=args.packages, targets=args.targets, salt=salt), args.jobs,
                    grid.url)
                figures["graph_local_s"].append(local)
                figures["graph_remote_s"].append(remote)
                figures["graph_overhead_ms_per_action"].append((remote - local) * args.jobs / actions * 1000)
                figures["server_cpu_ms_per_action"].append(cpu / actions * 1000)
                figures["upload_bytes_per_action"].append(uploaded / actions)
                figures["worker_ms_per_action"].append(_worker_median(pool, lines_before))
                text = f"run {run + 1}: graph {local:.2f} s here, {remote:.2f} s remote"
                if args.chain:
                    local, remote, _, _ = _pair(scratch, f"chain{run}", functools.partial(_chain, count=args.chain, salt=salt), 1,
                                                grid.url)
                    figures["chain_local_ms_per_action"].append(local / args.chain * 1000)
                    figures["chain_remote_ms_per_action"].append(remote / args.chain * 1000)
                    figures["chain_overhead_ms_per_action"].append((remote - local) / args.chain * 1000)
                    text += f"; chain {local:.2f} s here, {remote:.2f} s remote"
                print(text, flush=True)
    print(f"\n{actions} genrules ({args.packages} chains of {args.targets}) at -j {args.jobs}, a chain of "
          f"{args.chain}, {args.workers} workers with one slot each; medians of {args.runs} runs")
    for name, values in figures.items():
        if values:
            print(f"  {name:30} median {statistics.median(values):10.3f}  "
                  f"(runs: {', '.join(f'{v:.3f}' for v in values)})")


def _worker_median(pool: list[WorkerProcess], skip: int) -> float:
    """The median of the workers' own time per action (ms) over the lease lines after the first ``skip``."""
    lines = [line for w in pool for line in w.lease_lines()]
    times = [int(m.group(1)) for line in lines[skip:] if (m := _LEASE.search(line))]
    return statistics.median(times) if times else 0.0


if __name__ == "__main__":
    main()
