"""``pbuild pull`` against ``skopeo copy`` of the same image from the same registry, same run.

    python bench/bench_pull.py [--runs 5]

In a copy of this repository (the working tree is never touched), //app:image is built and
pushed to a fresh docker-registry (tests/support/peers.py, the helper the tests use). Then, per
run, alternating so both see the same machine state:

1. cold ``pbuild pull REF --plain-http`` into an empty ``--cache-dir`` (wall time);
2. cold ``skopeo copy docker://REF oci:DIR`` into an empty folder (wall time);
3. warm ``pbuild pull REF`` with the cache of step 1.

``pbuild pull`` writes no build events; its report line says what it did, and
``runcheck.expect_pull`` checks it before any figure is printed: the cold pull downloaded every
blob (none from the cache but the tag's manifest, see ``expect_pull``), the warm one none (every
blob from the cache), both the same image digest; and the cold pull's bytes must be the image's
own, all of them: those of skopeo's layout (manifest, config, layers), so both tools copied the
same image whole.

Medians over the runs, and the ratio pbuild / skopeo of the cold medians.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PBUILD = str(REPO / "pbuild")
sys.path.insert(0, str(REPO))  # the tests package: its support helpers start the registry
sys.path.insert(0, str(HERE))

import runcheck  # noqa: E402

from tests.support.peers import docker_registry  # noqa: E402

_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "pbuild-out", "__pycache__", "workspaces", "*.egg-info",
                                      ".mypy_cache", ".ruff_cache", ".pytest_cache")


def _timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return wall, done.stdout


def _pull(ref: str, cache: Path, cwd: Path, *, cold: bool) -> tuple[float, runcheck.PullReport]:
    """Wall time and the checked report of one ``pbuild pull`` (cold: into an empty cache)."""
    wall, out = _timed([PBUILD, "pull", ref, "--plain-http", "--cache-dir", str(cache)], cwd)
    return wall, runcheck.expect_pull(out, f"pbuild pull, {'cold' if cold else 'warm'}", cold=cold)


def _blob_bytes(layout: Path) -> int:
    return sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SystemExit("bench: skopeo is not installed")
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-pull-") as tmp:
        scratch = Path(tmp)
        app = scratch / "repo"
        shutil.copytree(REPO, app, ignore=_COPY_IGNORE, symlinks=True)
        with docker_registry(scratch / "registry") as registry:
            ref = f"{registry.host}/app:bench"
            _timed([PBUILD, "push", "//app:image", ref, "--plain-http", "--cache-dir", str(scratch / "build"), "-q"],
                   app)
            cold, warm, copies = [], [], []
            image_bytes = 0
            for run in range(args.runs):
                cache = scratch / f"cache-{run}"
                wall, pulled = _pull(ref, cache, scratch, cold=True)
                downloaded = pulled.bytes_downloaded
                cold.append(wall)
                dest = scratch / f"skopeo-{run}"
                wall, _ = _timed([skopeo, "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}"],
                                 scratch)
                copied = _blob_bytes(dest)
                if copied != downloaded:
                    raise runcheck.refuse("pbuild pull and skopeo copy, cold",
                                          f"the same image's bytes from both, pbuild's {downloaded:,}",
                                          f"skopeo's layout holds {copied:,}")
                copies.append(wall)
                image_bytes = downloaded
                wall, again = _pull(ref, cache, scratch, cold=False)
                if again.digest != pulled.digest:
                    raise runcheck.refuse("pbuild pull, warm", f"the cold pull's image {pulled.digest}",
                                          f"it pulled {again.digest}")
                warm.append(wall)
                shutil.rmtree(cache)
                shutil.rmtree(dest)
    print(f"//app:image ({image_bytes:,} bytes of blobs) from a local docker-registry, {args.runs} runs, "
          f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    for name, values in (("pbuild pull, cold", cold), ("skopeo copy docker:// oci:, cold", copies),
                         ("pbuild pull, warm", warm)):
        print(f"  {name:34} median {statistics.median(values):.3f}s  "
              f"(runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"  {'ratio pbuild / skopeo, cold':34} {statistics.median(cold) / statistics.median(copies):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
