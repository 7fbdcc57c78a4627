"""The launcher tests' busybox image (tests/support/testimages.py) is a valid OCI layout for skopeo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.testimages import make_busybox_image


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
def test_written_images_are_valid_for_skopeo(tmp_path: Path) -> None:
    layout = make_busybox_image(tmp_path / "img")
    out = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci:{layout}:latest"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out)["config"]["Env"] == ["FOO=bar"]
    archive = tmp_path / "img.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"docker-archive:{archive}:busybox:test"], check=True,
                   capture_output=True)  # fmt: skip
    assert archive.stat().st_size > 1_000_000
    os.unlink(archive)
