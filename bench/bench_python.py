#!/usr/bin/env python3
"""Figures of the Python rules (issue 3), measured on this machine.

1. cold lock time for numpy (`pbuild lock --python`, pip's HTTP cache off);
2. `pbuild run //app:program` with nothing to rebuild vs `python3 app/program.py` with numpy
   installed in a venv, measured alternately in one run;
3. `pbuild run //app:program` right after an edit of program.py (rebuild + run);
4. `pbuild test` of cached py_test results, per target.

The benchmark workspaces live in bench/workspaces/ (ignored by git) and are copied from this
repo: app/program.py, third_party/python, third_party/debian and WORKSPACE.toml. Network is needed for the first
fetch of numpy (through your pip configuration) and to lock.

Each figure's premise is checked before it is printed (bench/runcheck.py): the cold lock wrote a
lock pinning numpy, with pip's cache off (``PIP_NO_CACHE_DIR=1``) into a workspace with no lock
yet; every timed ``pbuild run`` prints numpy's answer (18) and its build events say nothing ran
("nothing to rebuild": run's fast path, which starts the recorded run plan without a build,
replays that build's events, all cached) or exactly the edited program's chain ran
(``EDIT_CHAIN``: one PyStage, nothing of numpy or the tree); every timed ``pbuild test`` took each of its py_test
results from the cache and ran nothing. The venv's python3 must print the same answer. Usage:

    .venv/bin/python bench/bench_python.py [--runs N] [--skip-lock]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runcheck  # noqa: E402

REPO = HERE.parent
WORK = REPO / "bench" / "workspaces" / "python"
PBUILD = (sys.executable, "-m", "pbuild.engine.cli")
#: What an edit of program.py rebuilds: its staged sources, nothing else (not numpy, not the tree).
EDIT_CHAIN = {"PyStage": 1}


def timed(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, check_out: str | None = None
) -> float:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or (check_out is not None and proc.stdout.strip() != check_out):
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def median_of(runs: int, step: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [step() for _ in range(runs)]
    return statistics.median(samples), samples


def make_workspace(root: Path, *, program: bool = True) -> Path:
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy(REPO / "WORKSPACE.toml", root / "WORKSPACE.toml")
    # third_party/debian too: WORKSPACE.toml's [toolchains] name its trees
    for folder in ("python", "debian"):
        shutil.copytree(REPO / "third_party" / folder, root / "third_party" / folder)
    if program:
        (root / "app").mkdir()
        shutil.copy(REPO / "app" / "program.py", root / "app" / "program.py")
        (root / "app" / "BUILD.toml").write_text(
            '[program]\nrule = "py_binary"\nsrcs = ["program.py"]\nmain = "program.py"\n'
            'deps = ["//third_party/python:numpy"]\n'
        )
    return root


def env_with_cache(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBUILD_")}
    env["PBUILD_CACHE"] = str(cache)
    return env


def events_path(name: str) -> Path:
    return WORK / f"{name}.events.jsonl"


def bench_lock(runs: int) -> None:
    samples = []
    for _ in range(runs):
        root = make_workspace(WORK / "lock", program=False)
        (root / "third_party/python/requirements.in").write_text("numpy\n")
        lock = root / "third_party/python/requirements.lock"
        lock.unlink(missing_ok=True)  # the lock must be this run's, not the copied one
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
        samples.append(timed([*PBUILD, "lock", "--python"], cwd=root, env=env))
        pinned = lock.exists() and any(line.startswith("numpy==") for line in lock.read_text().splitlines())
        if not pinned:
            raise runcheck.refuse("cold lock of numpy", "a requirements.lock pinning numpy",
                                  f"{lock} {'does not pin numpy' if lock.exists() else 'was not written'}")
    print(
        f"cold lock of numpy (pbuild lock --python, no pip cache): median {statistics.median(samples):.2f} s "
        f"of {runs} {fmt(samples)}"
    )


def venv_with_numpy() -> Path:
    venv = WORK / "numpy-venv"
    python = venv / "bin" / "python3"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        lock = (REPO / "third_party/python/requirements.lock").read_text()
        version = next(
            line.split("==")[1].split()[0] for line in lock.splitlines() if line.startswith("numpy==")
        )
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"numpy=={version}"], check=True)
    return python


def run_program(root: Path, env: dict[str, str], events: Path) -> float:
    """One timed ``pbuild run //app:program`` writing its build events to ``events``."""
    argv = [*PBUILD, "run", "--build-event-json", runcheck.fresh(events), "//app:program"]
    return timed(argv, cwd=root, env=env, check_out="18")


def bench_run(runs: int) -> None:
    root = make_workspace(WORK / "run")
    env = env_with_cache(WORK / "cache")
    events = events_path("run")
    run_program(root, env, events)  # fetch, install, stage
    runcheck.expect_built(events, "pbuild run //app:program, first build")
    python = venv_with_numpy()
    pbuild_samples, python_samples = [], []
    for _ in range(runs):  # alternate, so both see the same machine load
        pbuild_samples.append(run_program(root, env, events))
        runcheck.expect_noop(events, "pbuild run //app:program, nothing to rebuild")
        python_samples.append(timed([str(python), "app/program.py"], cwd=root, check_out="18"))
    p, q = statistics.median(pbuild_samples), statistics.median(python_samples)
    print(f"pbuild run //app:program, nothing to rebuild: median {p:.3f} s {fmt(pbuild_samples)}")
    print(f"python3 app/program.py (numpy in a venv):     median {q:.3f} s {fmt(python_samples)}")
    print(f"  difference: {p - q:+.3f} s (budget +0.300 s)")
    program = root / "app" / "program.py"
    original = program.read_text()
    edit_samples = []
    figure = "pbuild run //app:program after editing program.py"
    try:
        for i in range(runs):
            program.write_text(original + f"# edit {i} {time.time_ns()}\n")
            edit_samples.append(run_program(root, env, events))
            runcheck.expect_mnemonics(events, figure, EDIT_CHAIN)
    finally:
        program.write_text(original)
    e = statistics.median(edit_samples)
    print(f"pbuild run //app:program after editing program.py: median {e:.3f} s {fmt(edit_samples)}")
    print(f"  difference to python3: {e - q:+.3f} s (budget +0.500 s)")


def bench_cached_tests(runs: int, targets: int = 10) -> None:
    root = make_workspace(WORK / "test", program=False)
    tests = root / "tests"
    tests.mkdir()
    build = []
    for i in range(targets):
        (tests / f"test_t{i}.py").write_text(f"def test_{i}():\n    assert {i} + 1 == {i + 1}\n")
        build.append(f'[test_t{i}]\nrule = "py_test"\nsrcs = ["test_t{i}.py"]\n')
    (tests / "BUILD.toml").write_text("\n".join(build))
    env = env_with_cache(WORK / "cache")
    events = events_path("test")
    timed([*PBUILD, "test", "//tests:all"], cwd=root, env=env)

    def cached_test(pattern: str, count: int) -> float:
        took = timed([*PBUILD, "test", "--build-event-json", runcheck.fresh(events), pattern], cwd=root, env=env)
        runcheck.expect_tests_cached(events, f"pbuild test {pattern}, cached results", count)
        return took

    all_median, all_samples = median_of(runs, lambda: cached_test("//tests:all", targets))
    one_median, one_samples = median_of(runs, lambda: cached_test("//tests:test_t0", 1))
    print(
        f"pbuild test of {targets} cached py_test targets: median {all_median:.3f} s "
        f"= {all_median / targets:.3f} s per target {fmt(all_samples)}"
    )
    print(f"pbuild test of 1 cached py_test target: median {one_median:.3f} s {fmt(one_samples)}")


def fmt(samples: Sequence[float]) -> str:
    return "[" + " ".join(f"{s:.3f}" for s in samples) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--lock-runs", type=int, default=3)
    parser.add_argument("--skip-lock", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if not args.skip_lock:
        bench_lock(args.lock_runs)
    bench_run(args.runs)
    bench_cached_tests(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
