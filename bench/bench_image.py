#!/usr/bin/env python3
"""Figures of the image rules (issue 4): `./pbuild build //app:image` against `podman build`.

Measured in one run, medians of --runs:

1. cold, with every download already in the cache: before each run the action-cache entries of
   every action except the fetches (their keys come from a build event log), the workspace's
   memo of them, and pbuild-out/ are deleted, so every layer and image action runs again while
   the .debs and the wheel come from the cache;
2. after editing app/program.py (only the app layer and the image are rebuilt);
3. no-op.

Each timed build writes its events, and ``bench/runcheck.py`` checks them before a figure is
printed: every cold run executed every action but the fetches, every edit exactly the app layer
and the image, every no-op nothing; otherwise the script stops without a figure.

Then:
4. `podman build` of an equivalent Dockerfile (FROM the same Debian Python base, loaded into
   podman; COPY the numpy site-packages and program.py): with --no-cache, and after editing
   program.py with its layer cache.

The workspace is a copy of this repo's app/, third_party/ and WORKSPACE.toml below
bench/workspaces/image (ignored by git). The first run needs the network (the apt mirror and
the pip index of this host). Usage:

    .venv/bin/python bench/bench_image.py [--runs N] [--no-podman]
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
import zipfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import runcheck  # noqa: E402

WORK = REPO / "bench" / "workspaces" / "image"
PBUILD = (sys.executable, "-m", "pbuild.engine.cli")
BASE_TAG = "localhost/pbuild-bench-pybase:latest"
APP_TAG = "localhost/pbuild-bench-podman-app:latest"

BASE_BUILD = f"""
# The Debian Python base alone, for the podman comparison.
[pybase]
rule = "image"
layers = ["//third_party/debian:python3"]
cmd = ["/usr/bin/python3.11"]
repo_tags = ["{BASE_TAG}"]
"""

DOCKERFILE = """\
FROM {base}
COPY site-packages/ /usr/local/lib/python3.11/dist-packages/
COPY program.py /app/app/program.py
ENV PYTHONPATH=/app
WORKDIR /app
ENTRYPOINT ["/usr/bin/python3.11", "-m", "app.program"]
"""


#: CPU seconds (user + system) of every timed command, by label: a figure that the load other
#: processes put on the machine changes less than wall time.
CPU: dict[str, list[float]] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, label: str = "") -> float:
    start, cpu_start = time.perf_counter(), _children_cpu()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if label:
        CPU.setdefault(label, []).append(_children_cpu() - cpu_start)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def setup() -> Path:
    ws = WORK / "ws"
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    for part in ("WORKSPACE.toml", ".pbuildignore", "app", "third_party"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, ws / part, ignore=shutil.ignore_patterns("pbuild-out", "__pycache__"))
        elif src.exists():
            shutil.copy2(src, ws / part)
    (ws / "BUILD.toml").write_text("")
    (ws / "bench_base").mkdir()
    (ws / "bench_base/BUILD.toml").write_text(BASE_BUILD)
    return ws


def pbuild_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PBUILD_CACHE"] = str(cache)
    return env


FETCHES = ("DebFetch", "PyFetch")
COLD, EDIT, NOOP = "pbuild cold (downloads cached)", "pbuild after editing program.py", "pbuild no-op"
PODMAN_COLD, PODMAN_EDIT = "podman build --no-cache (same base)", "podman build after editing program.py"


def forget_all_but_fetches(cache: Path, events: Path, ws: Path) -> None:
    """Delete the action-cache entries of every non-fetch action of the last build, the
    workspace's memo of the entries it used (which would otherwise answer for them), and pbuild-out/."""
    from pbuild.engine.uptodate import index_base

    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "action" and event["mnemonic"] not in FETCHES:
            entry = cache / "ac" / event["key"][:2] / event["key"]
            if entry.exists():
                entry.unlink()
    Path(index_base(str(ws), str(cache)) + ".acmemo").unlink(missing_ok=True)
    shutil.rmtree(ws / "pbuild-out", ignore_errors=True)


def show(name: str, values: list[float]) -> None:
    cpu = CPU.get(name, [])
    cpu_text = f"  CPU median {statistics.median(cpu):6.3f} s" if cpu else ""
    print(f"{name:44} median {statistics.median(values):6.3f} s{cpu_text}  ({', '.join(f'{v:.3f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-podman", action="store_true")
    args = parser.parse_args()
    ws = setup()
    cache = WORK / "cache"
    events = WORK / "events.jsonl"
    print("warming the download cache (first run fetches from the network)...", flush=True)
    run([*PBUILD, "build", "//app:image", "//bench_base:pybase"], cwd=ws, env=pbuild_env(cache))

    cold, edit, noop = [], [], []
    for i in range(args.runs):
        run([*PBUILD, "build", "--build-event-json", str(events), "//app:image"], cwd=ws, env=pbuild_env(cache))
        forget_all_but_fetches(cache, events, ws)
        cold.append(run([*PBUILD, "build", "--build-event-json", str(events), "//app:image"], cwd=ws,
                        env=pbuild_env(cache), label=COLD))
        checked = runcheck.expect_cold(events, COLD, may_be_cached=FETCHES)
        print(f"  cold run {i + 1}: {dict(sorted(checked.statuses().items()))}", flush=True)
    program = ws / "app/program.py"
    original = program.read_text()
    run([*PBUILD, "build", "//app:image"], cwd=ws, env=pbuild_env(cache))
    for i in range(args.runs):
        program.write_text(original + f"# edit {time.time_ns()} {i}\n")
        edit.append(run([*PBUILD, "build", "--build-event-json", str(events), "//app:image"], cwd=ws,
                        env=pbuild_env(cache), label=EDIT))
        checked = runcheck.expect_executed(events, EDIT, 2)  # the app layer and the image
        if i == 0:
            print(f"  edit run: {dict(sorted(checked.statuses().items()))}", flush=True)
        noop.append(run([*PBUILD, "build", "--build-event-json", str(events), "//app:image"], cwd=ws,
                        env=pbuild_env(cache), label=NOOP))
        runcheck.expect_noop(events, NOOP)
    program.write_text(original)
    print()
    show(COLD, cold)
    show(EDIT, edit)
    show(NOOP, noop)

    if args.no_podman or not shutil.which("podman"):
        return
    run([*PBUILD, "build", "//bench_base:pybase"], cwd=ws, env=pbuild_env(cache))
    subprocess.run(
        ["podman", "load", "-i", str(ws / "pbuild-out/bench_base/pybase/image.tar")],
        check=True,
        capture_output=True,
    )
    context = WORK / "podman-context"
    if context.exists():
        shutil.rmtree(context)
    context.mkdir()
    wheel = next((ws / "pbuild-out").rglob("numpy-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(context / "site-packages")
    (context / "program.py").write_text(original)
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=BASE_TAG))
    podman_cold, podman_edit = [], []
    try:
        for i in range(args.runs):
            podman_cold.append(run(["podman", "build", "--no-cache", "-q", "-t", APP_TAG, "."], cwd=context,
                                   label=PODMAN_COLD))
            (context / "program.py").write_text(original + f"# edit {time.time_ns()} {i}\n")
            podman_edit.append(run(["podman", "build", "-q", "-t", APP_TAG, "."], cwd=context, label=PODMAN_EDIT))
        ids = set()
        for _ in range(2):
            run(["podman", "build", "--no-cache", "-q", "-t", APP_TAG, "."], cwd=context)
            ids.add(
                subprocess.run(
                    ["podman", "image", "inspect", "--format", "{{.Digest}}", APP_TAG],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            )
    finally:
        subprocess.run(["podman", "rmi", "-f", APP_TAG, BASE_TAG], capture_output=True)
        subprocess.run(["podman", "image", "prune", "-f"], capture_output=True)
    show(PODMAN_COLD, podman_cold)
    show(PODMAN_EDIT, podman_edit)
    print(
        f"podman build twice from the same context: {'same digest' if len(ids) == 1 else 'different digests'}"
    )


if __name__ == "__main__":
    main()
