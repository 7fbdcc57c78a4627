"""The shared determinism helpers every writer uses."""

from __future__ import annotations

import io
import tarfile

import pytest
from pbuild.lib import determinism
from pbuild.lib.errors import UserError


def test_source_date_epoch() -> None:
    assert determinism.source_date_epoch({}) == 0
    assert determinism.source_date_epoch({"SOURCE_DATE_EPOCH": " 1700000000 "}) == 1700000000
    for bad in ("yesterday", "-5", "1.5"):
        with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
            determinism.source_date_epoch({"SOURCE_DATE_EPOCH": bad})


def test_rfc3339() -> None:
    assert determinism.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert determinism.rfc3339(1700000000) == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize(("mode", "is_dir", "expected"), [
    (0o100600, False, 0o644), (0o100664, False, 0o644), (0o100700, False, 0o755), (0o100775, False, 0o755),
    (0o40700, True, 0o755), (0o40777, True, 0o755),
])
def test_normalize_mode(mode: int, is_dir: bool, expected: int) -> None:
    assert determinism.normalize_mode(mode, is_dir=is_dir) == expected


def test_canonical_json() -> None:
    assert determinism.canonical_json({"b": [1, {"d": 1, "c": "é"}], "a": None}) == \
        '{"a":null,"b":[1,{"c":"é","d":1}]}'.encode()
    assert determinism.pretty_json({"b": 1, "a": 2}) == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_tar_header_fields() -> None:
    header = determinism.tar_header("usr/bin/x", kind=tarfile.REGTYPE, mode=0o755, size=3, mtime=99)
    blob = header + b"abc" + determinism.tar_padding(3)
    blob += determinism.tar_trailer(len(blob))
    assert len(blob) % determinism.RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        (member,) = tar.getmembers()
    assert (member.name, member.mode, member.size, member.mtime) == ("usr/bin/x", 0o755, 3, 99)
    assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
    assert member.pax_headers == {}


@pytest.mark.parametrize(("name", "kind", "link"), [
    ("usr/bin/python3.11", tarfile.REGTYPE, ""),
    ("usr/lib/", tarfile.DIRTYPE, ""),
    ("bin", tarfile.SYMTYPE, "usr/bin"),
    ("usr/bin/x", tarfile.LNKTYPE, "usr/bin/y"),
    ("a/" + "n" * 98, tarfile.REGTYPE, ""),  # exactly 100 bytes: still ustar
    ("a/" + "n" * 99, tarfile.REGTYPE, ""),  # 101 bytes: a PAX path record
    ("usr/share/é.txt", tarfile.REGTYPE, ""),  # non-ASCII: a PAX path record
    ("l", tarfile.SYMTYPE, "/" + "t" * 120),  # long link target: a PAX linkpath record
])
def test_fast_headers_equal_tarfile(name: str, kind: bytes, link: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname, info.mtime = kind, 0o1755, 0 if kind != tarfile.REGTYPE else 77, link, 5
    info.uname = info.gname = ""
    expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    got = determinism.tar_header(name, kind=kind, mode=0o1755, size=77, linkname=link, mtime=5)
    assert got == expected
