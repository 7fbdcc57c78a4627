"""Reading .deb files without dpkg and turning a closure into a merged-/usr root filesystem."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from pbuild.rules.debian.control import parse_paragraphs
from pbuild.rules.debian.deb import (
    SLIM_EXCLUDES,
    DebError,
    merged_usr_path,
    read_ar,
    read_deb,
    rootfs_entries,
)
from pbuild.rules.oci.layerwriter import write_layer

from tests.support.debfixtures import DebSpec, make_deb

LIBC = DebSpec(
    "libc6",
    version="2.36-9+deb12u8",
    files={"lib/x86_64-linux-gnu/libc.so.6": b"\x7fELF libc", "usr/share/doc/libc6/copyright": b"(c)\n"},
    symlinks={"lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
)
PY = DebSpec(
    "python3.11-minimal",
    version="3.11.2-6",
    depends="libc6 (>= 2.34)",
    files={"usr/bin/python3.11": b"\x7fELF python", "bin/helper": b"#!/bin/sh\n"},
    modes={"usr/bin/python3.11": 0o755, "bin/helper": 0o755},
    hardlinks={"usr/bin/python3.11-copy": "usr/bin/python3.11"},
    compression="zst",
)
CERTS = DebSpec(
    "ca-certificates",
    architecture="all",
    files={"usr/share/ca-certificates/mozilla/B.crt": b"-----B-----\n",
           "usr/share/ca-certificates/mozilla/A.crt": b"-----A-----"},
    compression="gz",
)


@pytest.mark.parametrize("spec", [LIBC, PY, CERTS], ids=lambda s: s.compression)
def test_read_deb_each_compression(spec: DebSpec) -> None:
    contents = read_deb(make_deb(spec), name=f"{spec.name}.deb")
    assert contents.control["Package"] == spec.name
    assert contents.control["Version"] == spec.version
    paths = {e.path for e in contents.entries}
    for path in spec.files:
        assert merged_usr_path(path) in paths
    assert contents.md5sums


def test_merged_usr_and_hardlinks() -> None:
    contents = read_deb(make_deb(PY), name="py.deb")
    by_path = {e.path: e for e in contents.entries}
    assert "bin/helper" not in by_path
    assert by_path["usr/bin/helper"].mode == 0o755
    copy = by_path["usr/bin/python3.11-copy"]
    assert copy.kind == "file" and copy.data == b"\x7fELF python"
    assert merged_usr_path("lib64") == "usr/lib64"
    assert merged_usr_path("library/x") == "library/x"


def test_rootfs_layer(tmp_path: Path) -> None:
    debs = [read_deb(make_deb(spec), name=spec.name) for spec in (CERTS, LIBC, PY)]
    entries = rootfs_entries(debs, codename="bookworm", version="12.9")
    out = tmp_path / "layer.tar.gz"
    write_layer(entries, str(out))
    with tarfile.open(out) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}

        def text(name: str) -> str:
            handle = tar.extractfile(members[name])
            assert handle is not None
            return handle.read().decode()

        for link in ("bin", "sbin", "lib", "lib64"):
            assert members[link].issym() and members[link].linkname == f"usr/{link}"
        assert members["usr/lib64/ld-linux-x86-64.so.2"].issym()
        assert members["usr/lib/x86_64-linux-gnu/libc.so.6"].isfile()
        assert members["tmp"].mode == 0o1777 and members["root"].mode == 0o700
        assert "root:x:0:0:" in text("etc/passwd") and "root:x:0:" in text("etc/group")
        os_release = text("etc/os-release")
        assert 'VERSION_ID="12"' in os_release and "VERSION_CODENAME=bookworm" in os_release
        status = next(parse_paragraphs(text("var/lib/dpkg/status.d/libc6")))
        assert status["Package"] == "libc6" and status["Version"] == "2.36-9+deb12u8"
        assert status["Status"] == "install ok installed"
        assert "var/lib/dpkg/status.d/libc6.md5sums" in members
        assert text("etc/ssl/certs/ca-certificates.crt") == "-----A-----\n-----B-----\n"
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())


def test_slim_excludes_keep_copyright() -> None:
    spec = DebSpec("doc-heavy", files={
        "usr/share/doc/doc-heavy/copyright": b"(c)", "usr/share/doc/doc-heavy/changelog.gz": b"x",
        "usr/share/man/man1/x.1.gz": b"x", "usr/share/locale/de/LC_MESSAGES/x.mo": b"x",
        "usr/lib/x/keep.so": b"x", "usr/share/docs-not-matched": b"x",
    })
    paths = {e.path for e in rootfs_entries([read_deb(make_deb(spec))], codename="bookworm", version="12",
                                            exclude=SLIM_EXCLUDES)}
    assert {"usr/share/doc/doc-heavy/copyright", "usr/lib/x/keep.so", "usr/share/docs-not-matched"} <= paths
    assert not {p for p in paths if "changelog" in p or "/man/" in p or "/locale/" in p}


def test_not_a_deb() -> None:
    with pytest.raises(DebError, match="not a Debian package"):
        read_deb(b"PK\x03\x04 a zip", name="x.deb")


def test_device_nodes_are_refused() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        node = tarfile.TarInfo("./dev/null")
        node.type = tarfile.CHRTYPE
        tar.addfile(node)
    data = make_deb(DebSpec("dev"))
    members = read_ar(data)
    control = members["control.tar.gz"]
    from tests.support.debfixtures import ar_archive

    bad = ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar", buffer.getvalue())])
    with pytest.raises(DebError, match="device"):
        read_deb(bad, name="dev.deb")
