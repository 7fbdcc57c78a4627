"""The deterministic layer writer: tar headers, ordering, parallel gzip, zstd, digests, conflicts."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard
from pbuild.rules.oci.layerwriter import (
    CHUNK,
    LayerEntriesError,
    LayerEntry,
    clean_path,
    entries_from_tree,
    merge_entries,
    write_layer,
)


def _tree(root: Path) -> Path:
    (root / "pkg/sub").mkdir(parents=True)
    (root / "pkg/a.py").write_text("print('a')\n")
    (root / "pkg/run.sh").write_text("#!/bin/sh\n")
    (root / "pkg/run.sh").chmod(0o700)
    (root / "pkg/sub/big.bin").write_bytes(os.urandom(3 * CHUNK + 12345))  # spans several chunks
    (root / "pkg/link").symlink_to("a.py")
    (root / "pkg/Z-upper").write_text("z")
    return root


def _members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return tar.getmembers()


def test_tar_is_deterministic_and_normalized(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    out = tmp_path / "l.tar.gz"
    digests = write_layer(entries_from_tree(str(src), prefix="/opt"), str(out), mtime=1234)
    blob = out.read_bytes()
    raw = gzip.decompress(blob)
    assert digests.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert digests.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert digests.size == len(blob)
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, no name
    members = _members(raw)
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode())
    assert names[:2] == ["opt", "opt/pkg"]
    by_name = {m.name: m for m in members}
    assert by_name["opt/pkg/run.sh"].mode == 0o755
    assert by_name["opt/pkg/a.py"].mode == 0o644
    assert by_name["opt/pkg"].mode == 0o755 and by_name["opt/pkg"].isdir()
    assert by_name["opt/pkg/link"].issym() and by_name["opt/pkg/link"].linkname == "a.py"
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 1234)
        assert not {"atime", "ctime"} & set(member.pax_headers)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        handle = tar.extractfile("opt/pkg/sub/big.bin")
        assert handle is not None and handle.read() == (src / "pkg/sub/big.bin").read_bytes()


def test_same_bytes_whatever_jobs_umask_and_mtime(tmp_path: Path) -> None:
    first = _tree(tmp_path / "one")
    old = os.umask(0o077)
    try:
        second = tmp_path / "two"
        second.mkdir()
        os.system(f"cp -r {first}/pkg {second}/pkg")  # noqa: S605 - a copy under another umask
        os.utime(second / "pkg/a.py", (5, 5))
    finally:
        os.umask(old)
    results = []
    for jobs, root in ((1, first), (2, second), (4, first)):
        out = tmp_path / f"l{jobs}.tar.gz"
        results.append((write_layer(entries_from_tree(str(root)), str(out), jobs=jobs), out.read_bytes()))
    assert results[0] == results[1] == results[2]


def test_gzip_stream_matches_gzip_module(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    out = tmp_path / "l.tar.gz"
    write_layer(entries_from_tree(str(src)), str(out), jobs=2, level=1)
    with gzip.open(out) as handle:  # checks CRC32 and ISIZE of the parallel stream
        assert len(handle.read()) > 3 * CHUNK


def test_zstd_and_none(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    plain = write_layer(entries_from_tree(str(src)), str(tmp_path / "l.tar"), compression="none")
    assert plain.digest == plain.diff_id and plain.media_type.endswith(".tar")
    z1 = write_layer(entries_from_tree(str(src)), str(tmp_path / "z1"), compression="zstd", jobs=1)
    z2 = write_layer(entries_from_tree(str(src)), str(tmp_path / "z2"), compression="zstd", jobs=2)
    assert z1 == z2 and z1.diff_id == plain.diff_id and z1.media_type.endswith("+zstd")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress((tmp_path / "z1").read_bytes())
    assert raw == (tmp_path / "l.tar").read_bytes()


def test_two_entries_at_one_path() -> None:
    entries = [
        LayerEntry("etc/conf", "file", 0o644, data=b"a", origin="//x:a"),
        LayerEntry("etc/conf", "file", 0o644, data=b"b", origin="//x:b"),
        LayerEntry("etc", "dir", 0o755),
        LayerEntry("etc/", "dir", 0o755),  # the same directory twice is fine
    ]
    with pytest.raises(LayerEntriesError) as info:
        merge_entries(entries)
    assert "two layer entries at one path" in info.value.message
    assert "/etc/conf: //x:a and //x:b" in info.value.message


def test_file_below_file() -> None:
    with pytest.raises(LayerEntriesError, match="not a directory"):
        merge_entries([LayerEntry("a", "file", 0o644, data=b""), LayerEntry("a/b", "file", 0o644, data=b"")])


@pytest.mark.parametrize("path", ["../etc/passwd", "/usr/../../x", "a/../../b"])
def test_escaping_destination(path: str) -> None:
    with pytest.raises(LayerEntriesError, match="escapes the image root"):
        clean_path(path)
    with pytest.raises(LayerEntriesError):
        merge_entries([LayerEntry(path, "file", 0o644, data=b"")])


def test_clean_path() -> None:
    assert clean_path("/usr//bin/./x") == "usr/bin/x"
    assert clean_path("./a/") == "a"


def test_long_and_unicode_names(tmp_path: Path) -> None:
    long_name = "d/" + "x" * 150 + "/ünïcode.txt"
    out = tmp_path / "l.tar"
    write_layer([LayerEntry(long_name, "file", 0o644, data=b"hi")], str(out), compression="none")
    members = _members(out.read_bytes())
    assert members[-1].name == long_name
    assert set(members[-1].pax_headers) <= {"path"}
