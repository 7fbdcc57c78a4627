"""The round trip of one trivial action through BuildGrid and one ``pbuild worker`` (issue 14).

    python bench/bench_worker.py [--runs 20]

Starts PostgreSQL and BuildGrid (tests/support/peers.py) and one worker, then submits ``--runs``
distinct trivial actions (``/bin/true`` with a salt, an empty input root) one after another
with BuildGrid's own client protos, each Execute stream held until the result arrives. Prints
the median round trip as the client sees it and, from the worker's own log line per lease, the
median of the worker's part: fetch (Command, input root, inputs), sandbox, upload (outputs,
stdout/stderr, FindMissingBlobs); the rest is BuildGrid (queueing, assignment, the Bots
long-poll, the operation stream) and gRPC.

Premise, checked before any figure is printed (bench/runcheck.py's ``refuse``): every timed
action ran at the worker (exit 0, not served from BuildGrid's action cache), and the worker
logged one lease line per action (the warm-up's and each timed one's).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # the tests package: its support helpers start the peers

sys.path.insert(0, str(HERE))

import runcheck  # noqa: E402

from tests.support.peers import buildgrid_execution_server, postgres_server  # noqa: E402
from tests.support.reapi_client import ReapiClient  # noqa: E402
from tests.support.workers import workers  # noqa: E402

_LINE = re.compile(r"exit 0 in (\d+) ms \(fetch (\d+) ms for \d+ input bytes, sandbox (\d+) ms, upload (\d+) ms\)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-worker-") as tmp_name:
        tmp = Path(tmp_name)
        with postgres_server(tmp / "pg") as pg, buildgrid_execution_server(tmp / "bg", pg) as grid, \
                workers(tmp, grid.url, ("bench",)) as (worker,):
            client = ReapiClient(grid.target)
            root = client.directory({})
            warm = client.action(["/bin/true"], root, salt=b"warm-up")
            actions = [client.action(["/bin/true"], root, salt=f"run-{i}".encode()) for i in range(args.runs)]
            client.upload_all()
            client.run(warm)  # the worker's first sandbox and connections
            trips = []
            phases: list[tuple[float, float, float, float]] = []
            for action in actions:
                start = time.perf_counter()
                response = client.run(action)
                trips.append((time.perf_counter() - start) * 1000)
                if response.result.exit_code != 0 or response.cached_result:
                    raise runcheck.refuse("round trip", "each action executed at the worker, exit 0",
                                          f"exit {response.result.exit_code}, cached_result={response.cached_result}")
                m = response.result.execution_metadata

                def ms(a: object, b: object) -> float:
                    return (b.ToNanoseconds() - a.ToNanoseconds()) / 1e6  # type: ignore[attr-defined]

                # queued -> assigned (server), assigned -> worker has it (Bots long-poll), the
                # worker's own span, worker done -> server recorded it.
                phases.append((ms(m.queued_timestamp, m.worker_start_timestamp),
                               ms(m.worker_start_timestamp, m.input_fetch_start_timestamp),
                               ms(m.input_fetch_start_timestamp, m.output_upload_completed_timestamp),
                               ms(m.output_upload_completed_timestamp, m.worker_completed_timestamp)))
            deadline = time.monotonic() + 10
            while len(worker.lease_lines()) < args.runs + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            parts = [tuple(int(x) for x in m.groups()) for line in worker.lease_lines()[1:]
                     if (m := _LINE.search(line))]
            client.close()
            if len(parts) != args.runs:
                raise runcheck.refuse("worker's part", f"{args.runs} lease lines after the warm-up's",
                                      f"the worker logged {len(parts)}: {worker.lease_lines()[-3:]}")
    med = statistics.median
    print(f"round trip, client Execute to result: median {med(trips):.0f} ms over {len(trips)} "
          f"(min {min(trips):.0f}, max {max(trips):.0f})")
    if phases:
        names = ("queued->assigned", "assigned->at the worker", "worker", "worker done->server has it")
        print("server's timestamps, medians: " + ", ".join(
            f"{name} {med(p[i] for p in phases):.0f} ms" for i, name in enumerate(names)))
    if parts:
        total, fetch, sandbox, upload = (med(p[i] for p in parts) for i in range(4))
        print(f"worker's part: median {total:.0f} ms (fetch {fetch:.0f}, sandbox {sandbox:.0f}, "
              f"upload {upload:.0f}); BuildGrid and gRPC: ~{med(trips) - total:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
