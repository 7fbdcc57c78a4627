"""The OCI distribution client against Debian's docker-registry, checked with skopeo."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.errors import InvalidReference, RegistryError
from pbuild.lib.oci.reference import Reference
from pbuild.lib.oci.registry.pull import pull_image
from pbuild.lib.oci.registry.push import push_layout
from pbuild.rules.oci.push import push_main

from tests.support.peers import (
    Layout,
    Registry,
    docker_registry,
    free_port,
    make_oci_layout,
    nginx_proxy,
    require,
    token_server,
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with docker_registry(tmp_path / "registry") as server:
        yield server


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return make_oci_layout(tmp_path / "layout", [{"etc/base.txt": b"base layer\n" * 50},
                                                 {"app/program.py": os.urandom(200_000)}])


@pytest.fixture(autouse=True)
def _isolated_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read this machine's docker/podman logins or registry variables."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("PBUILD_CACHE", str(tmp_path / "pbuild-cache"))
    for name in ("PBUILD_REGISTRY_USER", "PBUILD_REGISTRY_PASSWORD", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)


def _skopeo_inspect(ref: str) -> dict[str, object]:
    skopeo = require("skopeo")
    done = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_push_is_visible_to_skopeo_and_a_second_push_sends_nothing(registry: Registry, layout: Layout,
                                                                   tmp_path: Path) -> None:
    first = push_layout(str(layout.path), f"{registry.host}/app:1.0", plain_http=True)
    assert first.digest == layout.manifest_digest
    assert first.blobs_uploaded == 3 and first.blobs_skipped == 0
    blob_sizes = sum(p.stat().st_size for p in (layout.path / "blobs" / "sha256").iterdir())
    manifest_size = (layout.path / "blobs" / "sha256" / layout.manifest_digest[7:]).stat().st_size
    assert first.bytes_uploaded == blob_sizes - manifest_size
    seen = _skopeo_inspect(f"{registry.host}/app:1.0")
    assert seen["Digest"] == layout.manifest_digest
    assert seen["Layers"] == list(layout.layer_digests)

    second = push_layout(str(layout.path), f"{registry.host}/app:1.0", plain_http=True)
    assert (second.blobs_uploaded, second.bytes_uploaded, second.blobs_skipped) == (0, 0, 3)


def test_editing_one_layer_uploads_only_that_layer(registry: Registry, layout: Layout, tmp_path: Path) -> None:
    push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=True)
    edited = make_oci_layout(tmp_path / "edited", [{"etc/base.txt": b"base layer\n" * 50},
                                                   {"app/program.py": b"print(18)\n"}])
    report = push_layout(str(edited.path), f"{registry.host}/app:2", plain_http=True)
    changed_layer = (edited.path / "blobs" / "sha256" / edited.layer_digests[1][7:]).stat().st_size
    config = (edited.path / "blobs" / "sha256" / edited.config_digest[7:]).stat().st_size
    assert report.blobs_skipped == 1  # the base layer
    assert report.blobs_uploaded == 2 and report.bytes_uploaded == changed_layer + config
    assert _skopeo_inspect(f"{registry.host}/app:2")["Layers"] == list(edited.layer_digests)


def test_chunked_upload(registry: Registry, layout: Layout, tmp_path: Path) -> None:
    report = push_layout(str(layout.path), f"{registry.host}/chunked:1", plain_http=True, chunk_size=64 * 1024)
    assert report.chunks_uploaded >= 4  # the 200 kB layer went in 64 KiB PATCHes
    # Pulling verifies every blob's digest: the chunks were assembled correctly.
    pulled = pull_image(f"{registry.host}/chunked@{layout.manifest_digest}", str(tmp_path / "pulled"),
                        plain_http=True, cache_dir=str(tmp_path / "blobs"))
    assert pulled.blobs_downloaded == 4


def test_cross_repository_mount(registry: Registry, layout: Layout, tmp_path: Path) -> None:
    push_layout(str(layout.path), f"{registry.host}/team/one:1", plain_http=True)
    report = push_layout(str(layout.path), f"{registry.host}/team/two:1", plain_http=True)
    assert report.blobs_mounted == 3 and report.blobs_uploaded == 0 and report.bytes_uploaded == 0
    assert _skopeo_inspect(f"{registry.host}/team/two:1")["Digest"] == layout.manifest_digest


def test_pull_by_digest_is_verified_cached_and_works_offline(layout: Layout, tmp_path: Path) -> None:
    cache = tmp_path / "blob-cache"
    with docker_registry(tmp_path / "registry") as registry:
        push_layout(str(layout.path), f"{registry.host}/py:3.11", plain_http=True)
        ref = f"{registry.host}/py@{layout.manifest_digest}"
        first = pull_image(ref, str(tmp_path / "base"), plain_http=True, cache_dir=str(cache))
    assert first.blobs_downloaded == 4 and first.digest == layout.manifest_digest
    skopeo = require("skopeo")
    done = subprocess.run([skopeo, "inspect", f"oci:{tmp_path / 'base'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Digest"] == layout.manifest_digest

    # The registry is gone: the same pinned image still comes out of the cache.
    again = pull_image(ref, str(tmp_path / "base2"), plain_http=True, cache_dir=str(cache))
    assert again.blobs_downloaded == 0 and again.blobs_cached == 4
    for blob in (tmp_path / "base" / "blobs" / "sha256").iterdir():
        assert (tmp_path / "base2" / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()

    # A damaged cache entry is noticed, dropped and (offline) reported, never used.
    victim = cache / "sha256" / layout.layer_digests[0][7:]
    victim.chmod(0o644)
    victim.write_bytes(b"bit rot")
    with pytest.raises(RegistryError, match="cannot reach registry"):
        pull_image(ref, str(tmp_path / "base3"), plain_http=True, cache_dir=str(cache))
    assert not victim.exists() and not (tmp_path / "base3").exists()


def test_pull_requires_a_digest_and_reports_unknown_ones(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidReference, match="not pinned by digest") as info:
        pull_image(f"{registry.host}/py:latest", str(tmp_path / "x"), plain_http=True)
    assert info.value.exit_code == 2
    with pytest.raises(RegistryError, match="HTTP 404") as missing:
        pull_image(f"{registry.host}/py@sha256:{'0' * 64}", str(tmp_path / "x"), plain_http=True,
                   cache_dir=str(tmp_path / "cache"))
    assert "MANIFEST_UNKNOWN" in missing.value.message
    assert not (tmp_path / "x").exists()


def test_basic_auth_from_environment_and_docker_config(layout: Layout, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with docker_registry(tmp_path / "registry", user="ci", password="pa55") as registry:
        with pytest.raises(RegistryError, match="refused access anonymously") as anonymous:
            push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=True)
        assert "PBUILD_REGISTRY_USER" in (anonymous.value.hint or "")

        monkeypatch.setenv("PBUILD_REGISTRY_USER", "ci")
        monkeypatch.setenv("PBUILD_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(RegistryError, match="refused access as 'ci'"):
            push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=True)

        monkeypatch.setenv("PBUILD_REGISTRY_PASSWORD", "pa55")
        assert push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=True).blobs_uploaded == 3

        monkeypatch.delenv("PBUILD_REGISTRY_USER")
        monkeypatch.delenv("PBUILD_REGISTRY_PASSWORD")
        config = tmp_path / "docker-config"
        config.mkdir(exist_ok=True)
        (config / "config.json").write_text(json.dumps(
            {"auths": {registry.host: {"auth": base64.b64encode(b"ci:pa55").decode()}}}))
        report = push_layout(str(layout.path), f"{registry.host}/app:2", plain_http=True)
        assert report.blobs_skipped == 3
        pulled = pull_image(f"{registry.host}/app@{layout.manifest_digest}", str(tmp_path / "p"),
                            plain_http=True, cache_dir=str(tmp_path / "c"))
        assert pulled.blobs_downloaded == 4


def test_registry_refusing_a_large_blob_is_a_clear_error(registry: Registry, layout: Layout,
                                                         tmp_path: Path) -> None:
    with nginx_proxy(tmp_path / "proxy", registry.port, max_body="16k") as proxy, \
            pytest.raises(RegistryError, match="HTTP 413") as info:
        push_layout(str(layout.path), f"{proxy.host}/app:1", plain_http=True)
    assert "client_max_body_size" in (info.value.hint or "")
    # Nothing was tagged: the manifest goes last.
    skopeo = require("skopeo")
    done = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{registry.host}/app:1"],
                          capture_output=True, text=True)
    assert done.returncode != 0


def test_push_main_messages_and_exit_codes(registry: Registry, layout: Layout, tmp_path: Path) -> None:
    lines: list[str] = []
    assert push_main(str(layout.path), f"{registry.host}/app:1.0", plain_http=True, out=lines.append) == 0
    assert lines[0] == f"pushed {registry.host}/app:1.0@{layout.manifest_digest}"
    assert "3 blob(s) uploaded" in lines[1]

    lines.clear()
    down = f"127.0.0.1:{free_port()}"
    assert push_main(str(layout.path), f"{down}/app:1.0", plain_http=False, out=lines.append) == 1
    assert "cannot reach registry" in lines[0] and "--plain-http" in lines[0]

    lines.clear()
    assert push_main(str(tmp_path / "no-layout"), f"{registry.host}/app:1.0", plain_http=True,
                     out=lines.append) == 1
    assert "index.json" in lines[0]

    lines.clear()
    assert push_main(str(layout.path), "UPPER/Case:1", plain_http=True, out=lines.append) == 2
    assert "bad repository name" in lines[0]


def test_tls_against_a_plain_http_registry_suggests_plain_http(registry: Registry, layout: Layout) -> None:
    with pytest.raises(RegistryError) as info:
        push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=False)
    assert "--plain-http" in (info.value.hint or "")


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5000/app:1.0", ("127.0.0.1:5000", "app", "1.0", None)),
    ("localhost/a/b", ("localhost", "a/b", None, None)),
    ("ghcr.io/org/img@sha256:" + "a" * 64, ("ghcr.io", "org/img", None, "sha256:" + "a" * 64)),
    ("python:3.11", ("docker.io", "library/python", "3.11", None)),
    ("127.0.0.1:5000/py:3@sha256:" + "b" * 64, ("127.0.0.1:5000", "py", "3", "sha256:" + "b" * 64)),
])
def test_reference_parsing(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize("text", ["host:5000/app@sha256:short", "host:5000/app:bad tag", "host:5000/App"])
def test_bad_references_are_input_errors(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    assert info.value.exit_code == 2 and info.value.hint


def test_bearer_token_auth(layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with token_server(tmp_path / "tokens", user="robot", password="t0ken") as tokens, \
            docker_registry(tmp_path / "registry", token=tokens) as registry:
        with pytest.raises(RegistryError, match="token server .* refused a token"):
            push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=True)
        monkeypatch.setenv("PBUILD_REGISTRY_USER", "robot")
        monkeypatch.setenv("PBUILD_REGISTRY_PASSWORD", "t0ken")
        report = push_layout(str(layout.path), f"{registry.host}/app:1", plain_http=True)
        assert report.blobs_uploaded == 3
        assert any("scope=repository%3Aapp%3Apull%2Cpush" in q and "service=pbuild-test-registry" in q
                   for q in tokens.requests)
        # A cross-repository mount asks for pull access to the source repository as well.
        mounted = push_layout(str(layout.path), f"{registry.host}/copy:1", plain_http=True)
        assert mounted.blobs_mounted == 3
        assert any("repository%3Aapp%3Apull" in q and "repository%3Acopy%3Apull%2Cpush" in q
                   for q in tokens.requests)
        pulled = pull_image(f"{registry.host}/copy@{layout.manifest_digest}", str(tmp_path / "p"),
                            plain_http=True, cache_dir=str(tmp_path / "c"))
        assert pulled.blobs_downloaded == 4


def test_image_index_push_and_platform_pull(registry: Registry, tmp_path: Path) -> None:
    multi = make_oci_layout(tmp_path / "multi", [{"a.txt": b"a"}], as_index=True)
    report = push_layout(str(multi.path), f"{registry.host}/multi:1", plain_http=True)
    assert report.digest == multi.manifest_digest and report.manifests_pushed == 2
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/multi:1"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(raw)["mediaType"] == mediatypes.OCI_INDEX

    pulled = pull_image(f"{registry.host}/multi@{multi.manifest_digest}", str(tmp_path / "amd64"),
                        plain_http=True, cache_dir=str(tmp_path / "cache"))
    assert pulled.digest != multi.manifest_digest  # the linux/amd64 image manifest, not the index
    index = json.loads((tmp_path / "amd64" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pulled.digest
    with pytest.raises(RegistryError, match="no manifest for platform linux/arm64"):
        pull_image(f"{registry.host}/multi@{multi.manifest_digest}", str(tmp_path / "arm"), plain_http=True,
                   cache_dir=str(tmp_path / "cache"), platform="linux/arm64")
