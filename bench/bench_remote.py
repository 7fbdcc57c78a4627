"""Remote-cache and registry figures of issue 6.

    python bench/bench_remote.py [--runs 3] [--protocol http|grpc|both] [--skip-app] [--skip-1k]
                                 [--skip-push]

For the 1,000-target synthetic workspace and for //app:image (built in a copy of this
repository, so the working tree is never touched), each run:

1. starts a fresh cache server (nginx with WebDAV PUT for http, BuildGrid for grpc);
2. cold build with an empty local cache and uploads on;
3. unchanged rebuild (counts the uploads it makes: nginx's access log must show no PUT);
4. ``pbuild clean --expunge``, then a rebuild from the remote (wall time, actions executed).

Then, against a fresh docker-registry: push //app:image, append a comment to app/program.py,
rebuild and push again; the second push must upload only the layer holding program.py (plus the
image config). Figures are medians over the runs. The servers come from tests/support/peers.py, the same
helpers the tests use (nginx, bgd and docker-registry must be installed; see .ci/run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PBUILD = str(REPO / "pbuild")
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))  # the tests package: its support helpers start the peers

import runcheck  # noqa: E402
from gen_workspace import generate  # noqa: E402

from tests.support.peers import buildgrid_server, docker_registry, nginx_cache  # noqa: E402

_COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "pbuild-out",
    "__pycache__",
    "workspaces",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


@dataclass
class Build:
    wall_s: float
    summary: dict[str, object]


def pbuild(args: list[str], cwd: Path, cache: Path, events: Path | None = None) -> Build:
    argv = [PBUILD, *args, "--cache-dir", str(cache)] + (["-q"] if args[0] == "build" else [])
    if events is not None:
        argv += ["--build-event-json", str(events)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary: dict[str, object] = {}
    if events is not None and events.exists():
        for line in events.read_text().splitlines():
            record = json.loads(line)
            if record.get("type") == "summary":
                summary = record
    return Build(wall, summary)


@contextlib.contextmanager
def cache_server(protocol: str, base: Path) -> Iterator[tuple[str, object]]:
    if protocol == "http":
        with nginx_cache(base, access_log=True) as nginx:
            yield nginx.url(), nginx
    else:
        with buildgrid_server(base) as grid:
            yield grid.url, None


def uploads(server: object) -> tuple[int, int]:
    """(PUT requests, bytes sent) so far, from nginx's access log."""
    if server is None:
        return (0, 0)
    puts = [r for r in server.requests() if r[0] == "PUT"]  # type: ignore[attr-defined]
    return len(puts), sum(r[3] for r in puts)


def remote_figures(
    workspace: Path, pattern: str, protocol: str, runs: int, scratch: Path
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {
        k: []
        for k in (
            "cold_s",
            "noop_s",
            "remote_s",
            "ratio",
            "executed_from_remote",
            "remote_cached",
            "noop_put_requests",
            "cold_put_bytes",
        )
    }
    for run in range(runs):
        cache = scratch / f"cache-{protocol}-{run}"
        events = scratch / "events.json"
        shutil.rmtree(workspace / "pbuild-out", ignore_errors=True)
        with cache_server(protocol, scratch / f"server-{protocol}-{run}") as (url, server):
            remote = ["--remote-cache", url, "--remote-upload"]
            cold = pbuild(["build", pattern, *remote], workspace, cache, events)
            runcheck.expect_cold(events, f"{protocol} cold")
            before = uploads(server)
            noop = pbuild(["build", pattern, *remote], workspace, cache, events)
            runcheck.expect_noop(events, f"{protocol} no-op")
            after = uploads(server)
            pbuild(["clean", "--expunge"], workspace, cache)
            shutil.rmtree(workspace / "pbuild-out", ignore_errors=True)
            warm = pbuild(["build", pattern, *remote], workspace, cache, events)
            runcheck.expect_all_remote(events, f"{protocol} from the remote cache")
        figures["cold_s"].append(cold.wall_s)
        figures["noop_s"].append(noop.wall_s)
        figures["remote_s"].append(warm.wall_s)
        figures["ratio"].append(warm.wall_s / cold.wall_s)
        figures["executed_from_remote"].append(float(warm.summary.get("executed", -1)))  # type: ignore[arg-type]
        figures["remote_cached"].append(float(warm.summary.get("remote_cached", -1)))  # type: ignore[arg-type]
        figures["noop_put_requests"].append(float(after[0] - before[0]))
        figures["cold_put_bytes"].append(float(before[1]))
        shutil.rmtree(cache, ignore_errors=True)
    if protocol != "http":
        del figures["noop_put_requests"], figures["cold_put_bytes"]  # only nginx logs requests
    return figures


def _layers(ref: str) -> tuple[dict[str, int], int]:
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    manifest = json.loads(raw)
    return {layer["digest"]: layer["size"] for layer in manifest["layers"]}, manifest["config"]["size"]


def push_figures(workspace: Path, scratch: Path) -> dict[str, object]:
    cache = scratch / "cache-push"
    with docker_registry(scratch / "registry") as registry:
        first = _push(workspace, cache, f"{registry.host}/app:1")
        program = workspace / "app" / "program.py"
        program.write_text(program.read_text() + f"# edited by bench_remote at {time.time_ns()}\n")
        second = _push(workspace, cache, f"{registry.host}/app:2")
        layers1, _ = _layers(f"{registry.host}/app:1")
        layers2, config2 = _layers(f"{registry.host}/app:2")
    changed = {d: s for d, s in layers2.items() if d not in layers1}
    return {
        "first_push_bytes": first,
        "second_push_bytes": second,
        "layers": len(layers2),
        "changed_layers": len(changed),
        "changed_layer_bytes": sum(changed.values()),
        "config_bytes": config2,
        "second_push_is_changed_layers_plus_config": second == sum(changed.values()) + config2,
    }


def _push(workspace: Path, cache: Path, ref: str) -> int:
    done = subprocess.run(
        [PBUILD, "push", "//app:image", ref, "--plain-http", "--cache-dir", str(cache), "-q"],
        cwd=workspace,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"pbuild push failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    match = re.search(r"\(([\d,]+) bytes", done.stdout)
    if match is None:
        raise SystemExit(f"unexpected pbuild push output:\n{done.stdout}")
    return int(match.group(1).replace(",", ""))


def show(title: str, figures: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    for name, values in figures.items():
        med = statistics.median(values)
        text = f"{med:.3f}" if name.endswith("_s") or name == "ratio" else f"{med:.0f}"
        print(f"  {name:24} median {text}  (runs: {', '.join(f'{v:.3f}' for v in values)})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--protocol", choices=("http", "grpc", "both"), default="http")
    parser.add_argument("--skip-1k", action="store_true")
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--skip-push", action="store_true")
    args = parser.parse_args()
    protocols = ("http", "grpc") if args.protocol == "both" else (args.protocol,)
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-remote-") as tmp:
        scratch = Path(tmp)
        if not args.skip_1k:
            synthetic = scratch / "synthetic"
            generate(str(synthetic), 10, 100)
            for protocol in protocols:
                show(
                    f"1,000-target workspace, {protocol}",
                    remote_figures(synthetic, "//...", protocol, args.runs, scratch),
                )
        if not (args.skip_app and args.skip_push):
            app = scratch / "repo"
            shutil.copytree(REPO, app, ignore=_COPY_IGNORE, symlinks=True)
            if not args.skip_app:
                for protocol in protocols:
                    show(
                        f"//app:image, {protocol}",
                        remote_figures(app, "//app:image", protocol, args.runs, scratch),
                    )
            if not args.skip_push:
                print("\n//app:image push, then push again after editing app/program.py")
                for name, value in push_figures(app, scratch).items():
                    print(f"  {name:42} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
