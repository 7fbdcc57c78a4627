"""A small real toolchain tree for tests and benches: host programs and the shared libraries
``ldd`` names, copied into a Debian merged-/usr layout (``bin -> usr/bin``, ``lib -> usr/lib``,
``lib64 -> usr/lib64``, ``sbin -> usr/sbin``), as an unpacked ``deb_packages`` tree looks."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

MERGED = ("bin", "lib", "lib64", "sbin")
PROGRAMS = ("bash", "cat", "ls", "id", "touch", "env", "pwd", "true", "grep")


def _in_usr(path: str) -> str:
    """The merged-/usr place of a host path (``/lib/x`` -> ``usr/lib/x``), relative."""
    rel = path.lstrip("/")
    top = rel.split("/", 1)[0]
    return f"usr/{rel}" if top in MERGED else rel


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            found.append(parts[2])
        elif parts and parts[0].startswith("/"):
            found.append(parts[0])  # the dynamic loader
    return found


def build_tree(dest: Path, programs: Iterable[str] = PROGRAMS, *, hostname: str = "toolchain-tree") -> Path:
    """Make ``dest`` a root filesystem holding ``programs`` (looked up on the host's PATH) with
    their libraries, ``usr/bin/sh -> bash`` and an ``etc/hostname`` unlike the host's."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc"):
        (dest / name).mkdir(parents=True, exist_ok=True)
    for name in MERGED:
        (dest / name).symlink_to(f"usr/{name}")
    wanted: set[str] = set()
    for program in programs:
        path = shutil.which(program)
        assert path is not None, f"host program {program} is missing"
        shutil.copy2(os.path.realpath(path), dest / "usr/bin" / program)
        wanted.update(_libraries(path))
    for library in sorted(wanted):
        target = dest / _in_usr(library)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(library), target)
    if not (dest / "usr/bin/sh").exists():
        (dest / "usr/bin/sh").symlink_to("bash")
    (dest / "etc/hostname").write_text(f"{hostname}\n")
    return dest
