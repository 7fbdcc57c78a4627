"""//app:image_multiplatform: the lecture's program for linux/amd64 and linux/arm64 in one image index.

Builds from the committed locks, which cover both platforms (the Debian and Python locks of
issue 15); checked with skopeo: the index has both platforms, each platform's config its own
architecture, each layer set its own Debian packages and wheels where they differ, the app layer
shared, and the SBOM files beside the layout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.imageclone import clone_app_workspace
from tests.support.runner import Runner

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo")]

TAG = "pbuild.local/app-multiplatform:latest"


def _document(layout: Path, digest: str) -> dict[str, object]:
    found: dict[str, object] = json.loads((layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes())
    return found


def test_app_image_for_two_platforms(tmp_path: Path, pbuild: Runner) -> None:
    ws = clone_app_workspace(tmp_path / "clone")
    built = pbuild("build", "//app:image_multiplatform", "//app:image", cwd=ws, timeout=1200)
    assert built.code == 0, built
    out = ws / "pbuild-out/app/image_multiplatform"
    layout = out / "oci"
    index = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:{TAG}"], capture_output=True,
                                      text=True, check=True).stdout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    assert (out / "digest").read_text().strip().startswith("sha256:")
    layers = {}
    for entry in index["manifests"]:
        arch = entry["platform"]["architecture"]
        manifest = _document(layout, entry["digest"])
        config = _document(layout, manifest["config"]["digest"])  # type: ignore[index]
        assert config["architecture"] == arch
        layers[arch] = [layer["digest"] for layer in manifest["layers"]]  # type: ignore[attr-defined]
        shown = json.loads(subprocess.run(["skopeo", "inspect", "--override-arch", arch, f"oci:{layout}:{TAG}"],
                                          capture_output=True, text=True, check=True).stdout)
        assert shown["Architecture"] == arch
    # The Debian layer and numpy's wheel differ by platform; the app layer (last) is the same bytes.
    assert layers["amd64"][0] != layers["arm64"][0]
    assert layers["amd64"][-1] == layers["arm64"][-1]
    # The primary (this machine's) platform's image is //app:image's own.
    single = (ws / "pbuild-out/app/image/digest").read_text().strip()
    assert single in {m["digest"] for m in index["manifests"]}
    for name in ("sbom.spdx.json", "sbom.linux-amd64.spdx.json", "sbom.linux-arm64.spdx.json"):
        sbom = json.loads((out / name).read_text())
        assert sbom["spdxVersion"] == "SPDX-2.3", name
    arm = json.loads((out / "sbom.linux-arm64.spdx.json").read_text())
    assert any("arm64" in str(p.get("packageFileName", "")) for p in arm["packages"])
    assert any("aarch64" in str(p.get("packageFileName", "")) for p in arm["packages"])


def test_the_arm64_variant_of_the_program_prints_18_under_qemu(tmp_path: Path, pbuild: Runner) -> None:
    """The lecture's numpy program of the arm64 image, run through binfmt_misc and qemu-user-static,
    prints what the amd64 one prints; its SBOM lists every package of the arm64 Debian closure and
    numpy's aarch64 wheel, each with the hash the locks pin."""
    from pbuild.tools.launcher import binfmt

    found = binfmt.check("aarch64")
    if found.problem is not None:
        # As root, .ci/install registers the handler: its absence there is a failure, not a skip.
        (pytest.fail if os.geteuid() == 0 else pytest.skip)(f"no aarch64 emulation here: {found.problem}")
    ws = clone_app_workspace(tmp_path / "clone")
    for platform in ("linux/arm64", "linux/amd64"):
        ran = pbuild("run", "--rm", "--platform", platform, "//app:image_multiplatform", cwd=ws, timeout=1200)
        assert ran.code == 0, ran
        assert ran.out == "18\n", (platform, ran)
    sbom = pbuild("sbom", "--platform", "linux/arm64", "//app:image_multiplatform", "-q", cwd=ws, timeout=600)
    assert sbom.code == 0, sbom
    document = json.loads(sbom.out)
    assert sbom.out.encode() == (ws / "pbuild-out/app/image_multiplatform/sbom.linux-arm64.spdx.json").read_bytes()
    lock = json.loads((ws / "third_party/debian/debian.lock.json").read_text())["targets"]["python3"]
    arm64 = lock["platforms"]["linux/arm64"]["packages"]
    listed = {(p["name"], p["versionInfo"], p["checksums"][0]["checksumValue"]) for p in document["packages"]}
    assert {(p["name"], p["version"], p["sha256"]) for p in arm64} <= listed
    assert {p["architecture"] for p in arm64} <= {"arm64", "all"}
    numpy = next(p for p in document["packages"] if p["name"] == "numpy")
    assert "aarch64" in numpy["packageFileName"]
