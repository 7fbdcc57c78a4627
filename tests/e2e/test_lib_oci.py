"""pbuild.lib.oci: layout round trip, hostile layouts refused with clear messages, reference
parsing, and pulled blobs kept in the engine's CAS under --cache-dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pbuild.engine.store import LocalStore, OciBlobs
from pbuild.lib.digest import OciDigest, oci_digest_of
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.descriptor import Descriptor
from pbuild.lib.oci.errors import InvalidReference, LayoutError, RegistryError
from pbuild.lib.oci.reference import Reference

from tests.support.peers import docker_registry, make_oci_layout


def _write_image(out: Path, tmp: Path, *, tags: tuple[str, ...] = ("app:1",)) -> tuple[Descriptor, OciDigest]:
    """A small image written with the lib writer: one layer file, a config, a manifest."""
    layer = tmp / "layer.bin"
    layer.write_bytes(b"layer bytes\n" * 100)
    layer_digest = oci_digest_of(layer.read_bytes())
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [str(layer_digest)]},
                         "config": {"Cmd": ["/bin/true"]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": oci_digest_of(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.stat().st_size}],
    }).encode()
    top = Descriptor(mediatypes.OCI_MANIFEST, oci_digest_of(manifest), len(manifest))
    oci_layout.write_layout(str(out), top, documents={oci_digest_of(config): config, top.digest: manifest},
                            files={layer_digest: oci_layout.BlobFile(str(layer))}, tags=tags)
    return top, layer_digest


def test_layout_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "oci"
    top, layer_digest = _write_image(out, tmp_path, tags=("app:1", "app:latest"))
    image = oci_layout.read_image(str(out))
    assert image.digest == top.digest
    assert image.config["config"]["Cmd"] == ["/bin/true"]
    assert [layer.blob.digest for layer in image.layers] == [layer_digest]
    assert [e.ref_name for e in oci_layout.read_index(str(out))] == ["app:1", "app:latest"]
    assert oci_layout.read_image(str(out), ref_name="app:latest").digest == top.digest
    # Nothing of the writer's temp names is left, and the marker is the spec's.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_publish_layout_replaces_the_old_one_whole(tmp_path: Path) -> None:
    first = tmp_path / "first"
    top, _ = _write_image(first, tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale").write_text("old")
    files = {OciDigest("sha256:" + p.name): oci_layout.BlobFile(str(p)) for p in (first / "blobs/sha256").iterdir()}
    oci_layout.publish_layout(str(dest), top, files=files)
    assert not (dest / "stale").exists()
    assert oci_layout.read_image(str(dest)).digest == top.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "first", "layer.bin"]


def _escape_blob(out: Path, outside: Path) -> str:
    """The config blob replaced by a symlink to a file outside the layout (same bytes)."""
    manifest_digest = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((out / "blobs/sha256" / manifest_digest[7:]).read_text())
    config = out / "blobs/sha256" / manifest["config"]["digest"][7:]
    outside.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(outside)
    return "outside the layout"


def _traversal_digest(out: Path, outside: Path) -> str:
    index = json.loads((out / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (out / "index.json").write_text(json.dumps(index))
    return "index.json has a malformed digest for its manifest 1"


def _index_outside(out: Path, outside: Path) -> str:
    outside.write_text((out / "index.json").read_text())
    (out / "index.json").unlink()
    (out / "index.json").symlink_to(outside)
    return "index.json resolves to"


def _huge_size(out: Path, outside: Path) -> str:
    index = json.loads((out / "index.json").read_text())
    index["manifests"][0]["size"] = 1 << 40
    (out / "index.json").write_text(json.dumps(index))
    return "more than the"


def _negative_size(out: Path, outside: Path) -> str:
    index = json.loads((out / "index.json").read_text())
    index["manifests"][0]["size"] = -1
    (out / "index.json").write_text(json.dumps(index))
    return "no valid descriptor (digest and size)"


def _edited_config(out: Path, outside: Path) -> str:
    manifest_digest = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((out / "blobs/sha256" / manifest_digest[7:]).read_text())
    config = out / "blobs/sha256" / manifest["config"]["digest"][7:]
    data = config.read_bytes()
    config.write_bytes(data.replace(b"/bin/true", b"/bin/evil"))  # same size, other digest
    return "the image config blob sha256:"


@pytest.mark.parametrize("damage", [_escape_blob, _traversal_digest, _index_outside, _huge_size, _negative_size,
                                    _edited_config])
def test_hostile_layout_is_refused_with_a_clear_message(tmp_path: Path, damage: Callable[[Path, Path], str]) -> None:
    out = tmp_path / "oci"
    _write_image(out, tmp_path)
    expected = damage(out, tmp_path / "outside")
    with pytest.raises(LayoutError) as info:
        oci_layout.read_image(str(out))
    assert expected in info.value.message, info.value.message
    assert str(out) in info.value.message and info.value.hint
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", ("docker.io", "library/busybox", None, None)),
        ("localhost:5000/a/b:v1", ("localhost:5000", "a/b", "v1", None)),
        ("reg.example/x@sha256:" + "a" * 64, ("reg.example", "x", None, "sha256:" + "a" * 64)),
        ("127.0.0.1:5000/py:3.11@sha256:" + "b" * 64, ("127.0.0.1:5000", "py", "3.11", "sha256:" + "b" * 64)),
    ],
)
def test_reference_parsing(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(("text", "message"), [
    ("UPPER/Case:1", "bad repository name"),
    ("reg.example/x@sha256:abc", "is not a sha256 digest"),
    ("reg.example/x:bad tag", "bad tag"),
])
def test_bad_references_are_input_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message) as info:
        Reference.parse(text)
    assert info.value.exit_code == 2 and info.value.hint


def test_pinned_reference_required_for_a_pull() -> None:
    with pytest.raises(InvalidReference, match="not pinned by digest"):
        Reference.parse_pinned("reg.example/x:1")


def test_cas_blob_store_verifies_what_it_serves(tmp_path: Path) -> None:
    """OciBlobs keeps bytes once, in the CAS; a damaged blob is dropped, never served."""
    store = LocalStore(str(tmp_path / "cache"))
    blobs = OciBlobs(store)
    data = b"pulled layer\n" * 1000
    digest = oci_digest_of(data)
    path = blobs.put(digest, len(data), lambda sink: sink(data))
    assert path.startswith(store.cas_dir + "/") and Path(path).read_bytes() == data
    assert blobs.get(digest, len(data)) == path
    with pytest.raises(RegistryError, match="does not match"):
        blobs.put(oci_digest_of(b"other"), None, lambda sink: sink(data))
    os.chmod(path, 0o644)
    Path(path).write_bytes(b"bit rot")
    assert blobs.get(digest, len(data)) is None and not os.path.exists(path)


@pytest.mark.slow
def test_pulled_blobs_land_in_the_cas_under_cache_dir(tmp_path: Path) -> None:
    """A pull through the CLI keeps its blobs in the CAS of --cache-dir, not a cache of its own."""
    source = make_oci_layout(tmp_path / "src", [{"etc/base-release": b"base 1\n" * 300}])
    cache, home = tmp_path / "cache", tmp_path / "home"
    root = tmp_path / "ws"
    (root / "img").mkdir(parents=True)
    (root / "WORKSPACE.toml").write_text("[workspace]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PBUILD_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    with docker_registry(tmp_path / "registry") as registry:
        from pbuild.lib.oci.registry.push import push_layout

        push_layout(str(source.path), f"{registry.host}/base:1", plain_http=True, state_dir=str(tmp_path / "st"))
        (root / "img" / "BUILD.toml").write_text(
            f'[base]\nrule = "oci_pull"\nimage = "{registry.host}/base@{source.manifest_digest}"\nplain_http = true\n')
        done = subprocess.run([sys.executable, "-m", "pbuild.engine.cli", "build", "//img:base",
                               "--cache-dir", str(cache)], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr
    blobs = OciBlobs(LocalStore(str(cache)))
    for digest in (source.manifest_digest, source.config_digest, *source.layer_digests):
        path = blobs.get(OciDigest(digest), None)
        assert path is not None and path.startswith(str(cache / "cas") + "/"), digest
    assert not home.exists() or not list(home.rglob("oci-blobs"))  # no second cache root
