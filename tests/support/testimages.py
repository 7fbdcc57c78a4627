"""Test images for the launcher tests, written as real OCI layouts (e2e/test_launcher_images.py
checks them with skopeo).

The base image is busybox-static (Debian ``busybox-static``) with a symlink per applet, an
``/etc/passwd`` with root and ``app`` (1000), and a second layer with ``/app/hello.txt``.
Hostile layers are hand-written tar files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@dataclass(frozen=True)
class Entry:
    """One tar entry of a hand-written layer."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0


def file(name: str, data: bytes | str = b"", mode: int = 0o644) -> Entry:
    return Entry(name, tarfile.REGTYPE, data.encode() if isinstance(data, str) else data, mode)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, link=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, link=target)


def tar_layer(entries: Iterable[Entry]) -> bytes:
    """An uncompressed layer tar, byte for byte as given (no normalisation of names)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.linkname = e.link
            info.uid, info.gid = e.uid, e.gid
            info.devmajor, info.devminor = e.devmajor, e.devminor
            info.size = len(e.data) if e.kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(e.data) if e.kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def busybox_layer() -> bytes:
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    entries = [directory("bin"), file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)]
    entries += [symlink(f"bin/{a}", "busybox") for a in applets if a != "busybox"]
    entries += [
        directory("etc"),
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
        file("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
        directory("root", 0o700),
        directory("tmp", 0o1777),
        directory("home"),
        directory("home/app"),
        directory("mnt"),
    ]
    return tar_layer(entries)


def write_oci(layout: Path, layers: Sequence[bytes], config: dict[str, Any], compress: bool = True,
              architecture: str = "amd64") -> Path:
    """Write an OCI image layout with ``layers`` (uncompressed tars, bottom first); its config
    names ``architecture``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    diff_ids, descriptors = [], []
    for raw in layers:
        diff_ids.append(f"sha256:{hashlib.sha256(raw).hexdigest()}")
        data = gzip.compress(raw, mtime=0) if compress else raw
        digest, size = blob(data)
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descriptors.append({"mediaType": media, "digest": digest, "size": size})
    image_config = {
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = blob(json.dumps(image_config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": descriptors,
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


APP_LAYER = [directory("app"), file("app/hello.txt", "hello from layer 2\n")]
BASE_CONFIG = {"Cmd": ["/bin/sh", "-c", "echo hi"], "Env": ["FOO=bar"], "WorkingDir": "/app"}


def make_busybox_image(
    layout: Path, extra_layers: Sequence[bytes] = (), config: dict[str, Any] | None = None
) -> Path:
    return write_oci(layout, [busybox_layer(), tar_layer(APP_LAYER), *extra_layers], config or BASE_CONFIG)
