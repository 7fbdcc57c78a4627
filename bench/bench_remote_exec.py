"""A chain of genrules built locally and through remote execution, in the same run (issue 14).

    python bench/bench_remote_exec.py [--actions 1000] [--workers 2]

Writes a workspace of ``--actions`` genrules, each reading the previous one's output (so they
run one after another: the figure is the latency an action pays, not throughput), builds it
cold on this machine, then cold with ``--remote-executor`` against PostgreSQL, BuildGrid and
``--workers`` ``pbuild worker`` processes started here (tests/support/peers.py). Checks that
both builds wrote the same bytes and that every action was remote-executed, then prints both
wall times, the overhead per remote action over a local one, and from the workers' log lines
the median of their own part of an action (fetch, sandbox, upload).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # the tests package: its support helpers start the peers

from tests.support.peers import buildgrid_execution_server, postgres_server  # noqa: E402
from tests.support.workers import workers  # noqa: E402

PBUILD = str(REPO / "pbuild")
_LEASE = re.compile(r"exit 0 in (\d+) ms")


def _workspace(root: Path, count: int) -> None:
    (root / "chain").mkdir(parents=True)
    (root / "WORKSPACE.toml").write_text('[workspace]\nname = "bench"\n')
    rules = []
    for i in range(count):
        srcs = "[]" if i == 0 else f'[":s{i - 1}"]'
        first = "echo start" if i == 0 else "cat $<"
        rules.append(f'[s{i}]\nrule = "genrule"\nsrcs = {srcs}\nouts = ["s{i}.txt"]\n'
                     f'cmd = "{first} > $@; echo {i} >> $@"\n')
    (root / "chain/BUILD.toml").write_text("\n".join(rules))


def _build(ws: Path, cache: Path, target: str, *extra: str) -> tuple[float, dict[str, int]]:
    events = cache.parent / f"{cache.name}.events.json"
    start = time.perf_counter()
    done = subprocess.run([PBUILD, "build", target, "--cache-dir", str(cache), "--build-event-json", str(events),
                           *extra], cwd=ws, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr}")
    summary = next(json.loads(line) for line in events.read_text().splitlines() if '"summary"' in line)
    return wall, summary


def _outputs(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws / "pbuild-out").rglob("*.txt"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    target = f"//chain:s{args.actions - 1}"
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-rexec-") as tmp_name:
        tmp = Path(tmp_name)
        local_ws, remote_ws = tmp / "local", tmp / "remote"
        _workspace(local_ws, args.actions)
        _workspace(remote_ws, args.actions)
        local_s, local_sum = _build(local_ws, tmp / "local-cache", target)
        (tmp / "w").mkdir()
        names = tuple(f"w{i + 1}" for i in range(args.workers))
        with postgres_server(tmp / "pg") as pg, buildgrid_execution_server(tmp / "bg", pg) as grid, \
                workers(tmp / "w", grid.url, names) as pool:
            remote_s, remote_sum = _build(remote_ws, tmp / "remote-cache", target, "--remote-executor", grid.url)
            lease_ms = [int(m.group(1)) for w in pool for line in w.lease_lines() if (m := _LEASE.search(line))]
        if _outputs(local_ws) != _outputs(remote_ws):
            raise SystemExit("the remote build wrote other bytes than the local one")
        if local_sum["executed"] != args.actions or remote_sum["remote_executed"] != args.actions:
            raise SystemExit(f"unexpected statuses: local {local_sum}, remote {remote_sum}")
    per_local = local_s / args.actions * 1000
    per_remote = remote_s / args.actions * 1000
    print(f"{args.actions} chained genrules, cold, {args.workers} workers on this machine")
    print(f"local build:  {local_s:7.2f} s  ({per_local:.1f} ms per action)")
    print(f"remote build: {remote_s:7.2f} s  ({per_remote:.1f} ms per action)")
    print(f"overhead per remote action: {per_remote - per_local:.1f} ms")
    if lease_ms:
        print(f"worker's own part of an action (median): {statistics.median(lease_ms):.0f} ms "
              f"(fetch, sandbox, upload; the rest is BuildGrid, gRPC and the client)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
