#!/usr/bin/env python3
"""Layer writing speed: pbuild's layer writer against `tar --sort=name ... | gzip -n` on the same files.

The files are the numpy site-packages: the locked numpy wheel (from pbuild-out, so build
//app:image or //app:program first) unpacked into a temporary folder. Both writers run
alternately in one process run; medians are reported. No pbuild build is timed, so there are
no build events to check; what each figure claims is checked on its output instead: every
case's archive (gzip or zstd) must hold exactly the unpacked files, each with its size, as the
folder does (a writer that dropped or truncated files would be fast for the wrong reason), or
no figure is printed. Usage:

    .venv/bin/python bench/bench_layer.py [--runs N] [--wheel PATH]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import zstandard
from pbuild.rules.oci.layerwriter import entries_from_tree, write_layer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import runcheck  # noqa: E402


def tree_files(root: Path) -> dict[str, int]:
    """``{relative path: size}`` of the regular files under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def archive_files(path: Path) -> dict[str, int]:
    """``{path: size}`` of the regular files in a gzip or zstd layer (``./`` prefixes dropped)."""
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":  # zstd's magic number
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./"): m.size for m in tar.getmembers() if m.isfile()}


def find_wheel() -> Path:
    found = sorted(REPO.glob("pbuild-out/**/numpy-*.whl"))
    if not found:
        raise SystemExit(
            "no numpy wheel in pbuild-out/: run `./pbuild build //app:program` first, or pass --wheel"
        )
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--wheel", type=Path)
    args = parser.parse_args()
    wheel = args.wheel or find_wheel()
    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as tmp:
        site = Path(tmp) / "site-packages"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        files = sum(1 for p in site.rglob("*") if p.is_file())
        print(f"input: {wheel.name} unpacked: {files} files, {size / 1e6:.1f} MB; {jobs} CPUs")
        out = Path(tmp) / "out"
        shell = (
            f"tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C {site} -cf - . "
            f"| gzip -n > {out}"
        )
        cases = {
            "tar --sort=name | gzip -n": lambda: subprocess.run(shell, shell=True, check=True),
            f"pbuild gzip -6, {jobs} threads": lambda: write_layer(
                entries_from_tree(str(site)), str(out), jobs=jobs
            ),
            "pbuild gzip -6, 1 thread": lambda: write_layer(entries_from_tree(str(site)), str(out), jobs=1),
            f"pbuild gzip -1, {jobs} threads": lambda: write_layer(
                entries_from_tree(str(site)), str(out), jobs=jobs, level=1
            ),
            f"pbuild zstd -3, {jobs} threads": lambda: write_layer(
                entries_from_tree(str(site)), str(out), jobs=jobs, compression="zstd"
            ),
        }
        expected = tree_files(site)
        times: dict[str, list[float]] = {name: [] for name in cases}
        sizes: dict[str, int] = {}
        for _ in range(args.runs):
            for name, run in cases.items():  # alternate, so load changes hit every case alike
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                sizes[name] = out.stat().st_size
                written = archive_files(out)
                if written != expected:
                    missing, extra = sorted(expected.keys() - written.keys()), sorted(written.keys() - expected.keys())
                    resized = sorted(k for k in expected.keys() & written.keys() if expected[k] != written[k])
                    raise runcheck.refuse(name, f"a layer of the {len(expected)} unpacked files",
                                          f"it holds {len(written)}: missing {missing[:3]}, extra {extra[:3]}, "
                                          f"other sizes {resized[:3]}")
        for name, values in times.items():
            print(
                f"{name:32} median {statistics.median(values):6.3f} s  "
                f"(min {min(values):.3f}, max {max(values):.3f})  {sizes[name] / 1e6:6.2f} MB"
            )


if __name__ == "__main__":
    main()
