"""//app:image end to end: built by the CLI, loaded and run by podman, accepted by skopeo and umoci."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace
from tests.support.runner import Runner

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(shutil.which(t) for t in ("podman", "skopeo", "umoci", "runc")),
                       reason="needs podman, skopeo, umoci and runc"),
]


def test_app_image_prints_18(tmp_path: Path, pbuild: Runner) -> None:
    ws = clone_app_workspace(tmp_path / "clone")
    built = pbuild("build", "//app:image", cwd=ws, timeout=600)
    assert built.code == 0, built
    out = ws / "pbuild-out/app/image"
    digest = (out / "digest").read_text().strip()
    inspect = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{out / 'oci'}:pbuild.local/app:latest"], capture_output=True,
                                        text=True, check=True).stdout)
    assert inspect["Digest"] == digest and inspect["Created"] == "1970-01-01T00:00:00Z"
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{out / 'oci'}:pbuild.local/app:latest", str(bundle)],
                   capture_output=True, text=True, check=True)
    rootfs = bundle / "rootfs"
    assert (rootfs / "usr/bin/python3.11").is_file() and (rootfs / "bin").is_symlink()
    assert (rootfs / "var/lib/dpkg/status.d/python3.11-minimal").is_file()
    assert list((rootfs / "usr/local/lib/python3.11/dist-packages/numpy/__pycache__").glob("*.cpython-311.pyc"))
    # podman: load the docker-archive under a unique name, run it, remove it.
    tag = f"localhost/pbuild-e2e-{uuid.uuid4().hex[:12]}:latest"
    loaded = subprocess.run(["podman", "load", "-i", str(out / "image.tar")], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", "pbuild.local/app:latest"],
                              capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["podman", "tag", image_id, tag], check=True)
    try:
        run = subprocess.run(["podman", "--runtime", "runc", "run", "--rm", "--ulimit", "nofile=1024:1024",
                              "--ulimit", "nproc=1024:1024", tag], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout == "18\n"
    finally:
        subprocess.run(["podman", "rmi", tag], capture_output=True)
