"""Launcher overhead: from the launcher's start to the exec of the entrypoint, and end to end
against ``podman --runtime runc run`` of the same image, measured in the same run.

Usage: ``python bench/bench_launcher.py [--runs N] [--image oci:PATH] [--command CMD...]``.
Without ``--image`` a small busybox image is written to a temporary directory (the one the
tests use). Figures (medians):

- ``main() -> exec``: in-process, as ``pbuild run`` calls the launcher, from the entry of
  ``main()`` to the ``execve`` of the entrypoint (``PBUILD_LAUNCHER_TIMING``); goal <= 30 ms.
- ``process``: wall time of ``python -m pbuild.tools.launcher run --rm IMAGE -- CMD``
  (interpreter start, launch, the command, removal).
- ``podman``: wall time of ``podman --runtime runc run --rm`` of the same image (loaded once
  with ``skopeo copy`` into containers-storage); the goal is launcher <= 0.5 x podman.

No pbuild build is timed, so the premises are checked on the layer store and the outputs
instead (bench/runcheck.py's ``refuse``): the store is empty before the first, untimed run and,
after it, holds the image's layers (for an ``oci:`` image, every diff_id of its config); no
timed run adds or removes a layer (warm figures, no unpacking in them); the launcher and
podman print the same output for the command (the same image and command compared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))

import runcheck  # noqa: E402

PODMAN_TAG = "localhost/pbuild-bench-launcher:latest"


def layers_now() -> set[str]:
    """The diff_ids the layer store ($PBUILD_LAYER_STORE) holds."""
    from pbuild.tools.launcher.layerstore import stored_layers

    return set(stored_layers(os.environ["PBUILD_LAYER_STORE"]))


def image_diff_ids(image: str) -> set[str]:
    """The diff_ids of an ``oci:PATH`` image's (first) manifest; empty for another kind of reference."""
    if not image.startswith("oci:"):
        return set()
    layout = Path(image[4:])

    def blob(digest: str) -> dict[str, Any]:
        return json.loads((layout / "blobs" / digest.replace(":", "/", 1)).read_bytes())  # type: ignore[no-any-return]

    manifest = blob(json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"])
    return set(blob(manifest["config"]["digest"])["rootfs"]["diff_ids"])


def check_warm(figure: str, before: set[str]) -> None:
    """No layer was unpacked or removed since ``before``: the figure is of a warm store."""
    after = layers_now()
    if after != before:
        raise runcheck.refuse(figure, f"the {len(before)} layers already unpacked, no more, no fewer",
                              f"the store went from {sorted(before)} to {sorted(after)}")


def in_process(image: str, command: list[str], runs: int, timing: Path) -> tuple[float, dict[str, float]]:
    """Median main()->exec in ms, and the median of each step (see process.mark)."""
    start = time.perf_counter()
    from pbuild.tools.launcher import cli, main, run  # noqa: F401 - what main() imports on first use

    print(f"importing the launcher (once per process): {(time.perf_counter() - start) * 1000:.2f} ms")

    os.environ["PBUILD_LAUNCHER_TIMING"] = str(timing)
    totals: list[float] = []
    steps: dict[str, list[float]] = {}
    figure = "launcher main() -> exec"
    if layers_now():
        raise runcheck.refuse(figure, "an empty layer store before the first run", f"it holds {sorted(layers_now())}")
    warm: set[str] = set()
    for i in range(runs + 1):
        if i == 1:  # the first run unpacked the image: from here on, nothing may be unpacked
            warm = layers_now()
            if not warm or not image_diff_ids(image) <= warm:
                raise runcheck.refuse(figure, f"the image's layers {sorted(image_diff_ids(image))} in the store "
                                              "after the first run", f"it holds {sorted(warm)}")
        timing.unlink(missing_ok=True)
        code = main(["run", "--rm", image, *(["--", *command] if command else [])])
        assert code == 0, f"launcher exited {code}"
        marks = [line.split() for line in timing.read_text().splitlines()]
        previous = float(marks[0][1])
        for label, value in marks[1:]:
            steps.setdefault(label, []).append((float(value) - previous) * 1000)
            previous = float(value)
        totals.append((previous - float(marks[0][1])) * 1000)
    del os.environ["PBUILD_LAUNCHER_TIMING"]
    check_warm(figure, warm)
    # the first run unpacks layers and probes overlayfs: leave it out
    return statistics.median(totals[1:]), {k: statistics.median(v[1:]) for k, v in steps.items()}


def wall_ms(argv: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Median wall time in ms, and the output of the (untimed) warm-up run."""
    output = subprocess.run(argv, check=True, capture_output=True, env=env).stdout  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, output


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--podman-runs", type=int, default=10)
    parser.add_argument("--image", help="oci:PATH of the image to run (default: a busybox test image)")
    parser.add_argument(
        "--command",
        nargs="*",
        default=["/bin/true"],
        help="arguments after `--` (none: the image's own command)",
    )
    args = parser.parse_args()
    # Measure what users get: compiled modules (this machine may set PYTHONDONTWRITEBYTECODE).
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "tools"), quiet=1)
    with tempfile.TemporaryDirectory(prefix="pbuild-bench-launcher-") as tmp:
        os.environ["PBUILD_LAYER_STORE"] = os.path.join(tmp, "layers")
        os.environ["PBUILD_RUNTIME_DIR"] = os.path.join(tmp, "run")
        image = args.image
        if image is None:
            from tests.support.testimages import make_busybox_image

            image = f"oci:{make_busybox_image(Path(tmp) / 'image')}"
        median, steps = in_process(image, args.command, args.runs, Path(tmp) / "timing")
        print(f"image {image}, command {' '.join(args.command)}")
        print(
            f"launcher main() -> exec (in-process):  median {median:6.2f} ms over {args.runs} runs (goal <= 30 ms)"
        )
        print("  steps: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
        launcher = [sys.executable, "-m", "pbuild.tools.launcher", "run", "--rm", image]
        launcher += ["--", *args.command] if args.command else []
        warm = layers_now()
        process, ours = wall_ms(launcher, args.runs)
        check_warm("python -m pbuild.tools.launcher run --rm", warm)
        print(
            f"python -m pbuild.tools.launcher run --rm: median {process:6.2f} ms wall over {args.runs} runs"
        )
        python, _ = wall_ms([sys.executable, "-c", "pass"], args.runs)
        print(f"  (of which `python -c pass`:            median {python:6.2f} ms)")
        if shutil.which("podman") and shutil.which("skopeo") and image.startswith("oci:"):
            subprocess.run(["skopeo", "copy", image,
                            f"containers-storage:{PODMAN_TAG}"], check=True, capture_output=True)  # fmt: skip
            podman = [
                "podman", "--runtime", "runc", "run", "--rm", "--network", "none",
                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", PODMAN_TAG, *args.command,
            ]  # fmt: skip
            try:
                pm, theirs = wall_ms(podman, args.podman_runs)
                if theirs != ours:
                    raise runcheck.refuse("launcher / podman", "the same output from both",
                                          f"the launcher printed {ours[:200]!r}, podman {theirs[:200]!r}")
                print(
                    f"podman --runtime runc run --rm:        median {pm:6.2f} ms wall over {args.podman_runs} runs"
                )
                print(f"launcher / podman: {process / pm:.2f} (goal <= 0.5)")
            finally:
                subprocess.run(["podman", "rmi", "-f", PODMAN_TAG], capture_output=True, check=False)
        else:
            print("podman/skopeo not installed: no comparison")


if __name__ == "__main__":
    main()
