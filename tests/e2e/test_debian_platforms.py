"""The arm64 layer of //third_party/debian:python3, built on this machine from the committed lock.

In a clone of the repository workspace, only the arm64 layer is built (and the amd64 layer it needs:
that interpreter compiles the arm64 standard library), through the engine's ``build(only_files=...)``
in a pbuild process of its own. No emulator runs: the arm64 ``python3.11`` never starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.licenses import canonicalize_license_expression
from pbuild.lib.platforms import Platform
from pbuild.rules.debian.copyright import license_expression
from pbuild.rules.debian.lock import find_targets, read_locked_target, workspace_platforms

from tests.support.imageclone import clone_app_workspace
from tests.support.paths import REPO
from tests.support.runner import base_env

TARGET = "//third_party/debian:python3"
OUT = "pbuild-out/third_party/debian/python3"
ARM64 = Platform.parse("linux/arm64")
EM_AARCH64 = 0xB7

#: Builds the files of TARGET's LayerInfo for one platform, and nothing else of the workspace.
_BUILD_ONE_PLATFORM = """\
import sys
from pbuild.engine.api import Label
from pbuild.engine.build import BuildRequest, build
from pbuild.rules.oci.providers import LayerInfo

workspace, cache, target, platform = sys.argv[1:5]
label = Label.parse(target)

def layer_files(analyzed):
    layers = analyzed.targets[label].get(LayerInfo).for_platform(platform)
    return [f for layer in layers for f in (layer.blob, layer.meta)]

build(BuildRequest([target], cwd=workspace, workspace=workspace, cache_dir=cache, jobs=2, quiet=True),
      only_files=layer_files)
"""


@dataclass(frozen=True)
class Built:
    workspace: Path
    blob: Path
    meta: Path


def _build_arm64(ws: Path, cache: Path, *, umask: int, tz: str) -> Built:
    env = {**base_env(ws.parent), "TZ": tz, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _BUILD_ONE_PLATFORM, str(ws), str(cache), TARGET, str(ARM64)],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=900, umask=umask)
    assert proc.returncode == 0, proc.stderr
    return Built(ws, ws / OUT / "linux-arm64/layer.tar.gz", ws / OUT / "linux-arm64/layer.json")


@pytest.fixture(scope="module")
def arm64_layer(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("arm64")
    ws = clone_app_workspace(tmp / "ws")
    return _build_arm64(ws, tmp / "cache", umask=0o022, tz="UTC")


def _members(blob: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(blob) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(blob: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    with tarfile.open(blob) as tar:
        for name in names:
            handle = tar.extractfile(name)
            assert handle is not None, name
            out[name] = handle.read()
    return out


def _locked_arm64() -> list:  # type: ignore[type-arg]
    platforms = workspace_platforms(str(REPO)).locks
    request = find_targets(str(REPO / "third_party/debian"), platforms)[""]["python3"]
    return list(read_locked_target(str(REPO), "third_party/debian", "python3", request).packages_for(ARM64))


def test_only_the_layers_are_built(arm64_layer: Built) -> None:
    out = arm64_layer.workspace / OUT
    assert arm64_layer.blob.is_file() and arm64_layer.meta.is_file()
    # The primary (amd64) layer is the toolchain that compiled the arm64 bytecode; nothing else ran.
    assert (out / "layer.tar.gz").is_file()
    assert sorted(p.name for p in (arm64_layer.workspace / "pbuild-out").iterdir() if not p.name.startswith(".")) == [
        "third_party"]
    assert sorted(p.name for p in (arm64_layer.workspace / "pbuild-out/third_party/debian").iterdir()) == ["python3"]


def test_interpreter_is_an_aarch64_program(arm64_layer: Built) -> None:
    members = _members(arm64_layer.blob)
    assert members["usr/bin/python3.11"].isfile()
    elf = _read(arm64_layer.blob, ["usr/bin/python3.11"])["usr/bin/python3.11"]
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # ELFCLASS64
    assert int.from_bytes(elf[18:20], "little") == EM_AARCH64
    assert "usr/lib/aarch64-linux-gnu/libc.so.6" in members and "usr/lib/x86_64-linux-gnu/libc.so.6" not in members


def test_stdlib_bytecode_is_the_amd64_layers(arm64_layer: Built) -> None:
    amd64_blob = arm64_layer.workspace / OUT / "layer.tar.gz"
    arm64 = {n for n, m in _members(arm64_layer.blob).items() if n.endswith(".pyc") and m.isfile()}
    amd64 = {n for n, m in _members(amd64_blob).items() if n.endswith(".pyc") and m.isfile()}
    assert len(arm64) > 500
    for module in ("os", "json/__init__", "encodings/utf_8", "asyncio/base_events"):
        head, _, base = module.rpartition("/")
        path = f"usr/lib/python3.11/{head + '/' if head else ''}__pycache__/{base}.cpython-311.pyc"
        assert path in arm64, path
    # Only the platform's own _sysconfigdata differs (each layer compiles the module it ships).
    assert {p for p in arm64 ^ amd64 if "_sysconfigdata_" not in p} == set()
    common = sorted(arm64 & amd64)
    ours, theirs = _read(arm64_layer.blob, common), _read(amd64_blob, common)
    assert [p for p in common if ours[p] != theirs[p]] == []
    # And the .py beside each is the arm64 package's (the same stdlib source on both platforms).
    assert _read(arm64_layer.blob, ["usr/lib/python3.11/os.py"]) == _read(amd64_blob, ["usr/lib/python3.11/os.py"])


def test_contents_lists_every_locked_arm64_package(arm64_layer: Built) -> None:
    contents = json.loads(arm64_layer.meta.read_text())["contents"]
    locked = _locked_arm64()
    assert [(p["name"], p["version"], p["architecture"], p["filename"], p["sha256"]) for p in contents["packages"]] == [
        (p.name, p.version, p.architecture, p.basename, p.sha256) for p in sorted(locked, key=lambda p: p.name)]
    assert {p["architecture"] for p in contents["packages"]} == {"arm64", "all"}
    debs = arm64_layer.workspace / OUT
    for record in contents["packages"]:
        deb = debs / "linux-arm64/debs" / record["filename"]
        if not deb.exists():  # an Architecture: all package, fetched once for both platforms
            assert record["architecture"] == "all"
            deb = debs / "debs" / record["filename"]
        assert hashlib.sha256(deb.read_bytes()).hexdigest() == record["sha256"]
    # Each licence is the layer's own copyright file, parsed; every one a valid SPDX expression.
    members = _members(arm64_layer.blob)
    for record in contents["packages"]:
        path = f"usr/share/doc/{record['name']}/copyright"
        text = _read(arm64_layer.blob, [path])[path].decode() if path in members and members[path].isfile() else None
        if text is not None:
            assert record["license"] == license_expression(text), record["name"]
        if record["license"] is not None:
            canonicalize_license_expression(record["license"])
    by_name = {p["name"]: p for p in contents["packages"]}
    # Checked by hand against the files (their Files paragraphs' License lines).
    assert by_name["zlib1g"]["license"] == "Zlib"
    assert by_name["libexpat1"]["license"] == "MIT"  # "License: MIT"
    assert by_name["ca-certificates"]["license"] == "GPL-2.0-or-later AND MPL-2.0"  # GPL-2+, MPL-2.0
    assert by_name["libzstd1"]["license"] == "(BSD-3-Clause OR GPL-2.0-only) AND MIT AND Zlib"  # Expat, zlib
    assert by_name["libssl3"]["license"] == "(Artistic-1.0 OR GPL-1.0-or-later) AND Apache-2.0"
    assert by_name["libc6"]["license"] is None  # glibc's copyright file is free text
    assert by_name["libc6"]["source"] == "glibc" and by_name["libstdc++6"]["source"] == "gcc-12"
    assert by_name["zlib1g"]["homepage"] == "http://zlib.net/"
    assert contents["files"] == []


def test_same_layer_in_another_folder_umask_and_tz(arm64_layer: Built, tmp_path: Path) -> None:
    ws = clone_app_workspace(tmp_path / "another clone")
    again = _build_arm64(ws, tmp_path / "cache", umask=0o077, tz="Pacific/Chatham")
    assert again.blob.read_bytes() == arm64_layer.blob.read_bytes()
    first, second = json.loads(arm64_layer.meta.read_text()), json.loads(again.meta.read_text())
    assert first == second and first["digest"].startswith("sha256:")
