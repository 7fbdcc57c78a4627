"""A two-platform busybox image for the emulation tests: linux/amd64 from the host's busybox-static,
linux/arm64 from the Debian archive's ``busybox-static`` arm64 package.

The arm64 .deb is fetched through the host's apt sources with pbuild's own archive code (InRelease
verified with gpgv, the Packages index against InRelease, the .deb against the index's SHA256),
read with pbuild's .deb reader, and kept in a folder the caller gives (one per test session).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.support.testimages import (
    BASE_CONFIG,
    busybox_layer,
    directory,
    file,
    symlink,
    tar_layer,
    write_oci,
)

#: The applets the arm64 layer links (the host's ``busybox --list`` belongs to another build).
APPLETS = ("sh", "uname", "echo", "cat", "sleep", "true", "ls", "ps", "kill", "id", "grep", "tr", "cut", "sort", "head",
           "unshare", "mount", "readlink", "mkdir", "touch", "chmod")
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def host_codename() -> str:
    """The Debian suite this machine runs (the one its busybox-static came from)."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME")


def fetch_arm64_busybox(cache: Path) -> bytes:
    """The arm64 ``busybox`` binary of the host's Debian suite, its .deb cached in ``cache``."""
    from pbuild.rules.debian.archive import fetch_url, read_packages, read_release
    from pbuild.rules.debian.deb import read_deb
    from pbuild.rules.debian.sources import mirror_for_suite

    suite = host_codename()
    cache.mkdir(parents=True, exist_ok=True)
    source = mirror_for_suite(suite)
    packages = read_packages(source, suite, "main", "arm64", read_release(source, suite))
    (entry,) = [p for p in packages if p["Package"] == "busybox-static"]
    deb = cache / Path(entry["Filename"]).name
    if not deb.exists():
        data = fetch_url(f"{source.uri}/{entry['Filename']}")
        got = hashlib.sha256(data).hexdigest()
        assert got == entry["SHA256"] and len(data) == int(entry["Size"]), (entry["Filename"], got)
        partial = deb.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(deb)
    data = deb.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["SHA256"], f"{deb} was changed"
    contents = read_deb(data, name=deb.name)
    (busybox,) = [e.data for e in contents.entries if e.path == "usr/bin/busybox"]
    assert busybox[:4] == b"\x7fELF" and busybox[18:20] == b"\xb7\x00", "not an aarch64 ELF file"
    return busybox


def arm64_busybox_layer(busybox: bytes) -> bytes:
    """``/bin/busybox`` (arm64) with links for :data:`APPLETS`, and the test images' /etc files."""
    entries = [directory("bin"), file("bin/busybox", busybox, 0o755)]
    entries += [symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [
        directory("etc"),
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
        file("etc/group", "root:x:0:\napp:x:1000:\n"),
        directory("root", 0o700),
        directory("tmp", 0o1777),
    ]
    return tar_layer(entries)


def write_multiplatform(layout: Path, images: dict[str, Path]) -> Path:
    """An OCI layout whose index.json names one image index of ``images`` (platform -> a
    single-image layout written by :func:`write_oci`), their blobs copied in."""
    manifests = []
    for platform, single in images.items():
        shutil.copytree(single / "blobs", layout / "blobs", dirs_exist_ok=True)
        (descriptor,) = json.loads((single / "index.json").read_text())["manifests"]
        os_name, _, arch = platform.partition("/")
        descriptor.pop("annotations", None)
        manifests.append({**descriptor, "platform": {"os": os_name, "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests}).encode()
    digest = hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(index)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": INDEX_MEDIA_TYPE, "digest": f"sha256:{digest}", "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


def make_two_platform_busybox(base: Path, arm64_busybox: bytes) -> Path:
    """``base/multi``: an index of a linux/amd64 and a linux/arm64 busybox image, one layer each."""
    config = {**BASE_CONFIG, "WorkingDir": "/"}
    amd64 = write_oci(base / "amd64", [busybox_layer()], config, architecture="amd64")
    arm64 = write_oci(base / "arm64", [arm64_busybox_layer(arm64_busybox)], config, architecture="arm64")
    return write_multiplatform(base / "multi", {"linux/amd64": amd64, "linux/arm64": arm64})
