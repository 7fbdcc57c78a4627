"""An image for linux/amd64 and linux/arm64: the OCI image index, per-platform configs, the SBOM
files and artifacts, checked with skopeo and umoci; run on the host's platform; reproducible;
pushed to Debian's docker-registry with the referrers tag fallback; the bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.multiplatform import TAG, blob, document, make_workspace
from tests.support.peers import docker_registry, require
from tests.support.runner import Runner, assert_user_error, tree_digest

INDEX = "application/vnd.oci.image.index.v1+json"
SPDX = "application/spdx+json"
UMASK_077 = ("sh", "-c", 'umask 077 && exec "$@"', "sh")
UMASK_022 = ("sh", "-c", 'umask 022 && exec "$@"', "sh")

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("skopeo", "umoci")), reason="needs skopeo and umoci")


def _skopeo(*args: str) -> str:
    done = subprocess.run([require("skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def built(tmp_path: Path, pbuild: Runner) -> Path:
    ws = make_workspace(tmp_path / "ws")
    result = pbuild("build", "//pkg:image", "//pkg:single", cwd=ws)
    assert result.code == 0, result
    return ws / "pbuild-out/pkg"


def test_index_manifests_configs_and_sboms(built: Path, tmp_path: Path) -> None:
    out, layout = built / "image", built / "image/oci"
    top = (out / "digest").read_text().strip()
    index = json.loads(_skopeo("inspect", "--raw", f"oci:{layout}:{TAG}"))
    assert index["mediaType"] == INDEX and blob(layout, top) == json.dumps(index, sort_keys=True,
                                                                        separators=(",", ":")).encode()
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]
    for entry in index["manifests"]:
        manifest = document(layout, entry["digest"])
        config = document(layout, manifest["config"]["digest"])
        assert config["architecture"] == entry["platform"]["architecture"] and config["os"] == "linux"
    arm = json.loads(_skopeo("inspect", "--override-arch", "arm64", f"oci:{layout}:{TAG}"))
    assert arm["Architecture"] == "arm64"
    amd = json.loads(_skopeo("inspect", "--override-arch", "amd64", f"oci:{layout}:{TAG}"))
    assert amd["Architecture"] == "amd64"

    # index.json: the tag names the index; one untagged SBOM artifact per platform manifest.
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    tagged = [e for e in entries if "artifactType" not in e]
    assert [(e["digest"], e["annotations"]["org.opencontainers.image.ref.name"]) for e in tagged] == [(top, TAG)]
    artifacts = [e for e in entries if e.get("artifactType") == SPDX]
    assert len(artifacts) == 2 and all("annotations" not in e for e in artifacts)
    subjects = {}
    for entry in artifacts:
        manifest = document(layout, entry["digest"])
        assert manifest["artifactType"] == SPDX
        assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert blob(layout, manifest["config"]["digest"]) == b"{}"
        (layer,) = manifest["layers"]
        assert layer["mediaType"] == SPDX
        subjects[manifest["subject"]["digest"]] = blob(layout, layer["digest"])
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert subjects[by_arch["amd64"]] == (out / "sbom.linux-amd64.spdx.json").read_bytes() \
        == (out / "sbom.spdx.json").read_bytes()
    assert subjects[by_arch["arm64"]] == (out / "sbom.linux-arm64.spdx.json").read_bytes()
    sbom = json.loads((out / "sbom.linux-arm64.spdx.json").read_text())
    assert sbom["spdxVersion"] == "SPDX-2.3" and by_arch["arm64"].partition(":")[2] in json.dumps(sbom)

    # umoci 0.4 cannot pick a platform from an index ("tag is ambiguous"): one platform copied out
    # by skopeo is unpacked instead, and it holds the layers' files.
    arm_layout = tmp_path / "arm64"
    _skopeo("copy", "--override-arch", "arm64", f"oci:{layout}:{TAG}", f"oci:{arm_layout}:arm")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{arm_layout}:arm", str(bundle)],
                   capture_output=True, text=True, check=True)
    assert (bundle / "rootfs/srv/hello.txt").read_text() == "hello\n"
    assert json.loads((bundle / "config.json").read_text())["process"]["args"][-1] == "-m"


def test_single_platform_layout_has_the_sbom_artifact_and_umoci_reads_it(built: Path, tmp_path: Path) -> None:
    out, layout = built / "single", built / "single/oci"
    top = (out / "digest").read_text().strip()
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    assert [e["digest"] for e in entries if "artifactType" not in e] == [top]
    (artifact,) = [e for e in entries if "artifactType" in e]
    manifest = document(layout, artifact["digest"])
    assert manifest["subject"]["digest"] == top
    assert blob(layout, manifest["layers"][0]["digest"]) == (out / "sbom.spdx.json").read_bytes()
    assert not list(out.glob("sbom.linux-*.spdx.json"))
    assert json.loads(_skopeo("inspect", f"oci:{layout}:pkg/single:latest"))["Digest"] == top
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:pkg/single:latest", str(bundle)],
                   capture_output=True, text=True, check=True)
    assert (bundle / "rootfs/srv/hello.txt").is_file()


def test_sbom_false_leaves_the_artifact_out(tmp_path: Path, pbuild: Runner) -> None:
    from tests.support.multiplatform import BUILD

    ws = make_workspace(tmp_path / "ws", build=BUILD.replace('repo_tags = ["pbuild.local/mp:1"]',
                                                             'repo_tags = ["pbuild.local/mp:1"]\nsbom = false'))
    assert (result := pbuild("build", "//pkg:image", cwd=ws)).code == 0, result
    out = ws / "pbuild-out/pkg/image"
    entries = json.loads((out / "oci/index.json").read_text())["manifests"]
    assert len(entries) == 1 and "artifactType" not in entries[0]
    assert (out / "sbom.spdx.json").is_file() and (out / "sbom.linux-arm64.spdx.json").is_file()


def test_pbuild_run_runs_the_host_platform(tmp_path: Path, pbuild: Runner, env: dict[str, str]) -> None:
    ws = make_workspace(tmp_path / "ws")
    extra = {k: env[k] for k in ("PBUILD_LAYER_STORE", "PBUILD_RUNTIME_DIR")}
    result = pbuild("run", "//pkg:image", cwd=ws, env=extra, timeout=300)
    assert result.code == 0, result
    assert result.out.strip() == os.uname().machine


def test_reproducible_across_folders_umask_tz_and_jobs(tmp_path: Path, pbuild: Runner) -> None:
    first = make_workspace(tmp_path / "first" / "ws")
    second = make_workspace(tmp_path / "somewhere else" / "clone-two")
    a = pbuild("build", "--jobs", "1", "//pkg:image", cwd=first, cache=tmp_path / "cache-one",
               env={"TZ": "UTC", "LANG": "C.UTF-8"}, prefix=UMASK_022)
    assert a.code == 0, a
    b = pbuild("build", "--jobs", "3", "//pkg:image", cwd=second, cache=tmp_path / "cache-two",
               env={"TZ": "Pacific/Auckland", "LANG": "de_DE.UTF-8"}, prefix=UMASK_077)
    assert b.code == 0, b
    out_a, out_b = first / "pbuild-out/pkg/image", second / "pbuild-out/pkg/image"
    assert (out_a / "digest").read_bytes() == (out_b / "digest").read_bytes()
    tree_a, tree_b = tree_digest(out_a / "oci"), tree_digest(out_b / "oci")
    assert tree_a.keys() == tree_b.keys()
    for name, (content, _) in tree_a.items():
        assert tree_b[name][0] == content, name
    for name in ("image.tar", "sbom.spdx.json", "sbom.linux-amd64.spdx.json", "sbom.linux-arm64.spdx.json"):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    for text in (str(first), str(second), "Auckland", os.uname().nodename):
        assert not any(text.encode() in p.read_bytes() for p in (out_a / "oci/blobs/sha256").iterdir()
                       if p.stat().st_size < 100_000), text


def test_a_platform_the_locks_do_not_cover(tmp_path: Path, pbuild: Runner) -> None:
    ws = make_workspace(tmp_path / "ws", workspace='[workspace]\nname = "mp"\n')
    result = pbuild("build", "//pkg:image", cwd=ws)
    assert_user_error(result, 2, "linux/arm64", "pkg/BUILD.toml", "add it to [platforms] locks",
                      "./pbuild lock --python --debian")
    assert "Traceback" not in result.err


def test_a_layers_target_without_a_build_for_a_platform(tmp_path: Path, pbuild: Runner) -> None:
    from tests.support.multiplatform import BUILD

    build = BUILD + """
[amd64_only]
rule = "image"
layers = [":files"]
cmd = ["/bin/true"]
platforms = ["linux/amd64"]

[both]
rule = "image"
layers = [":amd64_only"]
cmd = ["/bin/true"]
platforms = ["linux/amd64", "linux/arm64"]
"""
    ws = make_workspace(tmp_path / "ws", build=build)
    result = pbuild("build", "//pkg:both", cwd=ws)
    assert_user_error(result, 2, "//pkg:amd64_only", "linux/arm64", "./pbuild lock --python --debian")
    assert "Traceback" not in result.err


def test_push_sends_the_index_every_manifest_and_the_sboms_with_the_referrers_tag(
        built: Path, tmp_path: Path, pbuild: Runner) -> None:
    layout, out = built / "image/oci", built / "image"
    top = (out / "digest").read_text().strip()
    ws = built.parent.parent
    extra = {"DOCKER_CONFIG": str(tmp_path / "docker-config")}
    with docker_registry(tmp_path / "registry") as registry:
        pushed = pbuild("push", "--plain-http", "//pkg:image", f"{registry.host}/mp:1", cwd=ws, env=extra)
        assert pushed.code == 0, pushed
        assert f"pushed {registry.host}/mp:1@{top}" in pushed.out
        assert pushed.out.count("artifact sha256:") == 2 and "referrers index tagged sha256-" in pushed.out
        index = json.loads(_skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/mp:1"))
        assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
        for entry in index["manifests"]:
            raw = _skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/mp@{entry['digest']}")
            assert raw.encode() == blob(layout, entry["digest"])
        arm = index["manifests"][1]["digest"]
        referrers = json.loads(_skopeo("inspect", "--tls-verify=false", "--raw",
                                       f"docker://{registry.host}/mp:sha256-{arm.partition(':')[2]}"))
        (listed,) = referrers["manifests"]
        assert listed["artifactType"] == SPDX
        artifact = json.loads(_skopeo("inspect", "--tls-verify=false", "--raw",
                                      f"docker://{registry.host}/mp@{listed['digest']}"))
        assert artifact["subject"]["digest"] == arm
        sbom_digest = artifact["layers"][0]["digest"]
        with urllib.request.urlopen(f"http://{registry.host}/v2/mp/blobs/{sbom_digest}", timeout=30) as resp:
            assert resp.read() == (out / "sbom.linux-arm64.spdx.json").read_bytes()

        # A second push merges with the referrers index already there: still one entry, nothing new.
        again = pbuild("push", "--plain-http", "//pkg:image", f"{registry.host}/mp:1", cwd=ws, env=extra)
        assert again.code == 0, again
        assert "referrers index tagged" not in again.out
        same: dict[str, Any] = json.loads(_skopeo("inspect", "--tls-verify=false", "--raw",
                                                  f"docker://{registry.host}/mp:sha256-{arm.partition(':')[2]}"))
        assert same == referrers


def test_images_and_save_read_the_index_and_skip_the_artifacts(built: Path, tmp_path: Path, pbuild: Runner) -> None:
    ws = built.parent.parent
    listed = pbuild("images", "--format", "json", cwd=ws)
    assert listed.code == 0, listed
    rows = {row["target"]: row for row in json.loads(listed.out)["built"]}
    assert rows["//pkg:image"]["names"] == [TAG] and rows["//pkg:single"]["names"] == ["pkg/single:latest"]
    layer_bytes = (built / "tools.tar.gz").stat().st_size + (built / "files.tar.gz").stat().st_size
    assert int(rows["//pkg:image"]["size"]) > 2 * layer_bytes  # both platforms' manifests counted
    saved = pbuild("save", "-o", str(tmp_path / "image.tar"), "//pkg:image", cwd=ws)
    assert saved.code == 0, saved
    host = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    inspect = json.loads(_skopeo("inspect", f"docker-archive:{tmp_path / 'image.tar'}"))
    assert inspect["Architecture"] == host


def test_an_image_on_a_two_platform_base(tmp_path: Path, pbuild: Runner) -> None:
    from tests.support.multiplatform import BUILD

    build = BUILD + """
[extra]
rule = "layer"
srcs = ["extra.txt"]

[child]
rule = "image"
base = ":image"
layers = [":extra"]
platforms = ["linux/amd64", "linux/arm64"]

[child_amd64]
rule = "image"
base = ":image"
layers = [":extra"]
"""
    ws = make_workspace(tmp_path / "ws", build=build)
    (ws / "pkg/extra.txt").write_text("extra\n")
    assert (result := pbuild("build", "//pkg:child", "//pkg:child_amd64", "//pkg:image", cwd=ws)).code == 0, result
    out = ws / "pbuild-out/pkg"
    base_index = document(out / "image/oci", (out / "image/digest").read_text().strip())
    child_index = document(out / "child/oci", (out / "child/digest").read_text().strip())
    for base_entry, entry in zip(base_index["manifests"], child_index["manifests"], strict=True):
        assert entry["platform"] == base_entry["platform"]
        base_manifest = document(out / "image/oci", base_entry["digest"])
        manifest = document(out / "child/oci", entry["digest"])
        assert manifest["layers"][:-1] == base_manifest["layers"] and len(manifest["layers"]) == 3
        config = document(out / "child/oci", manifest["config"]["digest"])
        assert config["architecture"] == entry["platform"]["architecture"]
        assert config["config"]["Cmd"] == ["/bin/busybox", "uname", "-m"]  # inherited from the base
    # A single-platform image on it takes the base's linux/amd64 manifest.
    single = document(out / "child_amd64/oci", (out / "child_amd64/digest").read_text().strip())
    assert single["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert single == document(out / "child/oci", child_index["manifests"][0]["digest"])


def test_a_single_platform_base_layout_for_two_platforms_is_refused(tmp_path: Path, pbuild: Runner) -> None:
    from tests.support.multiplatform import BUILD
    from tests.support.peers import make_oci_layout

    build = BUILD + """
[base_files]
rule = "filegroup"
srcs = { glob = ["base/**"] }

[on_layout]
rule = "image"
base = ":base_files"
layers = [":files"]
platforms = ["linux/amd64", "linux/arm64"]
"""
    ws = make_workspace(tmp_path / "ws", build=build)
    make_oci_layout(ws / "pkg/base", [{"etc/base.txt": b"base\n"}])  # linux/amd64 only
    result = pbuild("build", "//pkg:on_layout", cwd=ws)
    assert result.code != 0 and "Traceback" not in result.err, result
    assert "its base holds an image for linux/amd64, not linux/arm64" in result.err, result
