"""The image store's own logic: names, IDs and prefixes, ambiguity, removal rules, concurrent adds,
damaged files, hard links to the blob store."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
from pbuild.lib.digest import OciDigest, oci_hex
from pbuild.lib.oci.blobstore import DirectoryBlobStore
from pbuild.lib.oci.errors import InvalidReference, LayoutError
from pbuild.lib.oci.imagestore import (
    AmbiguousImage,
    ImageInUse,
    ImageNotFound,
    ImageStore,
    StoreDamaged,
    normalize_name,
)

from tests.support.ocimini import write_image


def _store(tmp_path: Path) -> ImageStore:
    return ImageStore.at(str(tmp_path / "cache"), DirectoryBlobStore(str(tmp_path / "cache" / "blobs")))


def _nobody(_digest: OciDigest) -> list[str]:
    return []


def test_add_resolve_by_name_short_name_digest_and_prefix(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digest = write_image(tmp_path / "a")
    image = store.add_layout(str(tmp_path / "a"), ["127.0.0.1:5000/app:1", "app"], "load test")
    assert image.digest == digest
    assert image.names == ("127.0.0.1:5000/app:1", "docker.io/library/app:latest")
    for name in ("127.0.0.1:5000/app:1", "app", "app:latest", "docker.io/library/app:latest", digest,
                 oci_hex(digest)[:4], oci_hex(digest)[:12], oci_hex(digest)):
        assert store.resolve(name).digest == digest, name
    assert store.find("app:2") is None
    assert store.find(oci_hex(digest)[:3]) is None  # fewer than 4 digits is no ID
    with pytest.raises(ImageNotFound, match="no image 'other:1'") as err:
        store.resolve("other:1")
    assert "pbuild pull" in (err.value.hint or "")
    assert image.size == sum(os.path.getsize(os.path.join(image.layout, "blobs", "sha256", oci_hex(b)))
                             for b in image.blobs)
    assert image.source == "load test" and image.blobs[0] == digest and len(image.blobs) == 3


def test_stored_blobs_are_hard_links_to_the_blob_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    image = store.add_layout(str(write_image(tmp_path / "a") and tmp_path / "a"), ["app:1"], "t")
    for blob in image.blobs:
        stored = os.path.join(image.layout, "blobs", "sha256", oci_hex(blob))
        cas = store.blobs.get(blob, None)
        assert cas is not None and os.path.samefile(stored, cas)
    assert store.referenced_blobs() == set(image.blobs)


def test_ambiguous_prefix_is_an_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    image = store.add_layout(str(write_image(tmp_path / "a") and tmp_path / "a"), ["app:1"], "t")
    hexd = oci_hex(image.digest)
    # A second image folder whose ID shares the first 6 digits (real IDs rarely do).
    twin = hexd[:6] + ("0" if hexd[6] != "0" else "1") + hexd[7:]
    shutil.copytree(os.path.dirname(image.layout), os.path.join(store.root, "sha256", twin), symlinks=True)
    with pytest.raises(AmbiguousImage, match="matches 2 images"):
        store.find(hexd[:6])
    with pytest.raises(AmbiguousImage):
        store.resolve(hexd[:4])
    assert store.resolve(hexd[:7]).digest == image.digest  # one more digit tells them apart
    assert store.resolve("app:1").digest == image.digest  # a name is looked up before IDs


def test_dangling_after_the_name_moves(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old = store.add_layout(str(write_image(tmp_path / "a", "a") and tmp_path / "a"), ["app:1"], "t")
    new = store.add_layout(str(write_image(tmp_path / "b", "b") and tmp_path / "b"), ["app:1"], "t")
    by_digest = {i.digest: i for i in store.images()}
    assert by_digest[old.digest].names == () and by_digest[new.digest].names == ("docker.io/library/app:1",)
    assert [i.digest for i in store.images()] == [new.digest, old.digest]  # newest first


def test_tag_and_remove(tmp_path: Path) -> None:
    store = _store(tmp_path)
    image = store.add_layout(str(write_image(tmp_path / "a") and tmp_path / "a"), ["app:1"], "t")
    assert store.tag("app:1", "127.0.0.1:5000/x/y:2").names == ("127.0.0.1:5000/x/y:2", "docker.io/library/app:1")
    with pytest.raises(ImageNotFound):
        store.tag("nope:1", "x:1")
    with pytest.raises(InvalidReference):
        store.tag("app:1", "Bad Name")
    # Untag one of two names: the image stays.
    removal = store.remove(["app:1"], force=False, users=_nobody)
    assert removal.untagged == ("docker.io/library/app:1",) and removal.deleted == ()
    assert store.resolve("127.0.0.1:5000/x/y:2").digest == image.digest
    # The last name, while a container uses it: refused, nothing changed.
    with pytest.raises(ImageInUse, match="web1"):
        store.remove(["127.0.0.1:5000/x/y:2"], force=False, users=lambda d: ["web1"] if d == image.digest else [])
    assert store.resolve("127.0.0.1:5000/x/y:2").digest == image.digest
    # With force: untagged and deleted; the layout is gone, the blobs stay in the blob store.
    removal = store.remove(["127.0.0.1:5000/x/y:2"], force=True, users=lambda d: ["web1"])
    assert removal.deleted == (image.digest,) and store.images() == []
    assert not os.path.exists(image.layout)
    assert store.blobs.get(image.digest, None) is not None


def test_remove_by_id_deletes_every_name_and_unknown_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    image = store.add_layout(str(write_image(tmp_path / "a") and tmp_path / "a"), ["app:1", "app:2"], "t")
    with pytest.raises(ImageNotFound):
        store.remove(["app:1", "missing:9"], force=False, users=_nobody)
    assert store.resolve("app:1").names == image.names  # nothing changed
    removal = store.remove([oci_hex(image.digest)[:8]], force=False, users=_nobody)
    assert removal.deleted == (image.digest,) and set(removal.untagged) == set(image.names)
    assert store.images() == []


def test_damaged_layout_stores_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    digest = write_image(tmp_path / "a")
    layers = [p for p in (tmp_path / "a" / "blobs" / "sha256").iterdir()
              if p.stat().st_size > 100 and p.name != oci_hex(digest)]
    manifest = json.loads((tmp_path / "a" / "blobs" / "sha256" / oci_hex(digest)).read_bytes())
    layer = tmp_path / "a" / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer.read_bytes())
    data[-1] ^= 0xFF
    layer.chmod(0o644)
    layer.write_bytes(bytes(data))
    assert layers
    with pytest.raises(LayoutError, match="does not match its digest"):
        store.add_layout(str(tmp_path / "a"), ["app:1"], "t")
    assert store.images() == [] and store.find("app:1") is None
    assert not (tmp_path / "cache" / "blobs" / "sha256").exists() or \
        not any((tmp_path / "cache" / "blobs" / "sha256").iterdir())


def test_damaged_names_file_is_an_error_with_the_fix(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_layout(str(write_image(tmp_path / "a") and tmp_path / "a"), ["app:1"], "t")
    names = Path(store.root) / "names.json"
    names.write_text(json.dumps({"../../etc": "sha256:" + "0" * 64}))
    with pytest.raises(StoreDamaged, match="names file"):
        store.images()


def test_normalize_name() -> None:
    assert normalize_name("app") == "docker.io/library/app:latest"
    assert normalize_name("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    with pytest.raises(InvalidReference):
        normalize_name("UPPER")


def _add_in_child(args: tuple[str, str, str]) -> str:
    cache, layout, name = args
    store = ImageStore.at(cache, DirectoryBlobStore(os.path.join(cache, "blobs")))
    return store.add_layout(layout, [name], "t").digest


def test_concurrent_adds_leave_a_whole_store(tmp_path: Path) -> None:
    layouts = [str(tmp_path / f"l{n}") for n in range(6)]
    for n, path in enumerate(layouts):
        write_image(Path(path), f"s{n % 3}")  # three images, each added twice at once
    cache = str(tmp_path / "cache")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        digests = pool.map(_add_in_child, [(cache, p, f"app:{n}") for n, p in enumerate(layouts)])
    store = ImageStore.at(cache, DirectoryBlobStore(os.path.join(cache, "blobs")))
    images = store.images()
    assert len(images) == 3 and len(set(digests)) == 3
    assert sorted(n for i in images for n in i.names) == [f"docker.io/library/app:{n}" for n in range(6)]
    assert not os.listdir(os.path.join(store.root, "tmp"))


def test_a_damaged_stored_image_is_reported_and_rmi_f_still_removes_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    image = store.add_layout(str(write_image(tmp_path / "a") and tmp_path / "a"), ["app:1"], "t")
    config = os.path.join(image.layout, "blobs", "sha256", oci_hex(image.blobs[1]))
    os.unlink(config)  # a hard link: replace it, never write through it into the blob store
    Path(config).write_bytes(b"{}")
    with pytest.raises(StoreDamaged, match="does not match its digest") as err:
        store.images()
    assert f"pbuild rmi -f {oci_hex(image.digest)[:12]}" in (err.value.hint or "")
    removal = store.remove([oci_hex(image.digest)[:12]], force=True, users=_nobody)
    assert removal.deleted == (image.digest,) and store.images() == []
    meta = Path(store.root) / "sha256"
    assert not list(meta.iterdir())
