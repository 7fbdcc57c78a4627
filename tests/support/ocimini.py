"""Tiny real OCI layouts written in process, for tests of the image store and archives.

Each image has one gzip layer holding one file, a config naming its diff_id, and a manifest;
``seed`` makes images differ. The bytes are those of real OCI images (umoci and skopeo read them).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from pbuild.lib.digest import OciDigest
from pbuild.lib.oci import layout as oci_layout
from pbuild.lib.oci import mediatypes
from pbuild.lib.oci.descriptor import Descriptor


def _sha(data: bytes) -> OciDigest:
    return OciDigest("sha256:" + hashlib.sha256(data).hexdigest())


def layer_tar(seed: str) -> bytes:
    """An uncompressed layer tar with one file ``/seed`` holding ``seed``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = seed.encode()
        info = tarfile.TarInfo("seed")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_image(dest: Path, seed: str = "one") -> OciDigest:
    """Write a one-layer image layout at ``dest``; returns its manifest digest."""
    raw = layer_tar(seed)
    layer = gzip.compress(raw, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": [_sha(raw)]}}, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _sha(layer),
                    "size": len(layer)}],
    }, sort_keys=True).encode()
    top = Descriptor(mediatypes.OCI_MANIFEST, _sha(manifest), len(manifest))
    oci_layout.write_layout(str(dest), top, documents={_sha(config): config, _sha(manifest): manifest,
                                                      _sha(layer): layer})
    return top.digest
