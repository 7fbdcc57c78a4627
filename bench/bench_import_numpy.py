"""`import numpy` in //app:image's tree against the host's Python with the same numpy (issue 10).

    .venv/bin/python bench/bench_import_numpy.py [--rounds 8]

Builds //app:image, unpacks its layers into a temporary tree and times `python -c "import numpy"`
with that tree as `/` (in pbuild's sandbox, the loop running inside it so that the sandbox's own
start is not counted) against the host's `pythonX.Y` importing the same numpy from the unpacked
dist-packages. A third column is the tree without the standard library's bytecode, as
deb_packages left it before it byte-compiled (goal: the image within 1.3x of the host).
Rounds alternate the three; medians of the wall time.

Premises checked before a figure is printed (bench/runcheck.py): the build of //app:image
finished with no failure (its events); the host and both trees import the same numpy (version,
and the host's from the unpacked dist-packages, not one of its own); the image's tree holds the
standard library's bytecode and the third column's tree none of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pbuild.tools.sandbox import SandboxRequest, run_sandboxed

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import runcheck  # noqa: E402

#: Prints which numpy an interpreter imports.
WHICH = "import numpy; print(numpy.__version__, numpy.__file__)"

#: Runs inside the tree (or on the host): times N fresh interpreters running CODE.
LOOP = """
import json, subprocess, sys, time
python, code, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(runs):
    start = time.perf_counter()
    subprocess.run([python, "-c", code], check=True)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def unpack(layout_dir: str, tree: str) -> None:
    index = json.loads(Path(layout_dir, "index.json").read_bytes())
    blobs = os.path.join(layout_dir, "blobs", "sha256")
    manifest = json.loads(Path(blobs, index["manifests"][0]["digest"][7:]).read_bytes())
    for layer in manifest["layers"]:
        with tarfile.open(os.path.join(blobs, layer["digest"][7:])) as tar:
            tar.extractall(tree, filter="tar")


def in_tree(tree: str, work: str, python: str, code: str, runs: int) -> list[float]:
    exec_root = os.path.join(work, "execroot")
    os.makedirs(exec_root, exist_ok=True)
    with open(os.path.join(exec_root, "loop.py"), "w") as handle:
        handle.write(LOOP)
    out = os.path.join(work, "out.json")
    result = run_sandboxed(SandboxRequest(argv=(python, "/execroot/loop.py", python, code, str(runs)),
                                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, exec_root=exec_root,
                                          writable_dirs=(), workdir="", hide_paths=(), stdout_path=out,
                                          stderr_path=os.path.join(work, "err.log"), root=tree))
    if result.exit_code != 0 or result.error:
        raise SystemExit(f"in the tree: {result} {Path(work, 'err.log').read_text()}")
    return json.loads(Path(out).read_bytes())  # type: ignore[no-any-return]


def which_numpy_in_tree(tree: str, work: str, python: str) -> tuple[str, str]:
    """(version, file) of the numpy ``python`` imports in ``tree`` (run as the timed loop is)."""
    exec_root = os.path.join(work, "execroot")
    os.makedirs(exec_root, exist_ok=True)
    out = os.path.join(work, "which.txt")
    result = run_sandboxed(SandboxRequest(argv=(python, "-c", WHICH), env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                                          exec_root=exec_root, writable_dirs=(), workdir="", hide_paths=(),
                                          stdout_path=out, stderr_path=os.path.join(work, "err.log"), root=tree))
    if result.exit_code != 0 or result.error:
        raise SystemExit(f"in the tree: {result} {Path(work, 'err.log').read_text()}")
    version, file = Path(out).read_text().split()
    return version, file


def which_numpy_on_host(python: str, site: str) -> tuple[str, str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": site, "LC_ALL": "C.UTF-8"}
    version, file = subprocess.run([python, "-c", WHICH], env=env, check=True, capture_output=True,
                                   text=True).stdout.split()
    return version, file


def stdlib_pycs(tree: str, version: str) -> int:
    return sum(len(files) for root, _, files in os.walk(os.path.join(tree, f"usr/lib/python{version}"))
               if os.path.basename(root) == "__pycache__")


def on_host(python: str, site: str, code: str, runs: int) -> list[float]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": site, "LC_ALL": "C.UTF-8"}
    out = subprocess.run([python, "-c", LOOP, python, code, str(runs)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = os.path.join(tmp, "events.jsonl")
        subprocess.run([os.path.join(REPO, "pbuild"), "build", "//app:image", "-q", "--build-event-json", events],
                       cwd=REPO, check=True)
        runcheck.expect_built(events, "import numpy in //app:image's tree")
        tree, bare = os.path.join(tmp, "tree"), os.path.join(tmp, "bare")
        unpack(os.path.join(REPO, "pbuild-out/app/image/oci"), tree)
        version = next(n[6:] for n in os.listdir(os.path.join(tree, "usr/lib")) if n.startswith("python3."))
        python = f"/usr/bin/python{version}"
        host = shutil.which(f"python{version}")
        if host is None:
            raise SystemExit(f"needs a python{version} on the host's PATH")
        # The interpreter itself, not a launcher script in front of it (pyenv's shims are).
        host = subprocess.run([host, "-c", "import sys; print(sys.executable)"], check=True, capture_output=True,
                              text=True).stdout.strip()
        shutil.copytree(tree, bare, symlinks=True)
        for root, dirs, _ in os.walk(os.path.join(bare, f"usr/lib/python{version}")):
            if "__pycache__" in dirs:
                shutil.rmtree(os.path.join(root, "__pycache__"))
                dirs.remove("__pycache__")
        site = os.path.join(tree, f"usr/local/lib/python{version}/dist-packages")
        figure = "import numpy, host against image"
        found = {"host": which_numpy_on_host(host, site), "image": which_numpy_in_tree(tree, tmp, python),
                 "image, no stdlib .pyc": which_numpy_in_tree(bare, tmp, python)}
        if len({v for v, _ in found.values()}) != 1 or not found["host"][1].startswith(site + os.sep):
            raise runcheck.refuse(figure, f"the same numpy everywhere, the host's from {site}", f"they import {found}")
        pycs = stdlib_pycs(tree, version), stdlib_pycs(bare, version)
        if pycs[0] == 0 or pycs[1] != 0:
            raise runcheck.refuse(figure, "the standard library's bytecode in the image's tree, none in the other",
                                  f"they hold {pycs[0]} and {pycs[1]} .pyc files")
        results: dict[str, list[float]] = {"host": [], "image": [], "image, no stdlib .pyc": []}
        for _ in range(args.rounds):
            results["host"] += on_host(host, site, "import numpy", 5)
            results["image"] += in_tree(tree, tmp, python, "import numpy", 5)
            results["image, no stdlib .pyc"] += in_tree(bare, tmp, python, "import numpy", 5)
    print(f"host: {host}")
    base = statistics.median(results["host"])
    for name, times in results.items():
        median = statistics.median(times)
        print(f"import numpy, {name:<22} median {median * 1000:6.1f} ms over {len(times)} runs "
              f"({median / base:.2f}x the host)")
    print("goal: the image within 1.3x of the host")


if __name__ == "__main__":
    main()
