"""Determinism in one place: every writer of a tar, a gzip stream or a JSON document uses this.

The invariants (DESIGN.md): the timestamp comes from ``SOURCE_DATE_EPOCH`` (default 0); entries
are sorted; modes are normalized; tar headers carry uid/gid 0, empty user and group names and no
PAX atime/ctime; JSON is canonical; gzip headers carry mtime 0 and no file name.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from typing import Any

from pbuild.lib.errors import UserError

# json and tarfile are imported where used: the epoch is read on pbuild's start-up path (the
# up-to-date check), where importing tarfile alone would cost more than that whole check.

#: tarfile.REGTYPE, the type of a regular file's header.
_REGTYPE = b"0"

#: Size of one tar block; headers and data are padded to it.
BLOCK = 512
#: tar archives end with two zero blocks and are padded to a record of 20 blocks (as GNU tar does).
RECORD = 20 * BLOCK

#: Modes used when a source gives no explicit mode.
FILE_MODE = 0o644
EXEC_MODE = 0o755
DIR_MODE = 0o755


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int:
    """The build timestamp: ``SOURCE_DATE_EPOCH`` (seconds, an integer ≥ 0), default 0."""
    env = os.environ if environ is None else environ
    text = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(
            f"SOURCE_DATE_EPOCH={text!r} is not a non-negative integer",
            hint="set SOURCE_DATE_EPOCH to seconds since 1970-01-01 (for example `git log -1 --format=%ct`)",
        )
    return value


#: 1980-01-01T00:00:00Z, the earliest time a zip entry can carry (its MS-DOS date field counts
#: years from 1980; zipfile refuses earlier times).
ZIP_EPOCH_FLOOR = 315532800


def zip_epoch(epoch: int) -> int:
    """The timestamp of a zip (a PEX, a wheel) built at ``epoch``: ``epoch``, but not before 1980.

    The default epoch 0 cannot be written in a zip, so zips use 1980-01-01 instead, the time
    pex and wheel themselves stamp reproducible archives with.
    """
    return max(epoch, ZIP_EPOCH_FLOOR)


def rfc3339(epoch: int) -> str:
    """``epoch`` as the UTC RFC 3339 timestamp OCI configs use (``1970-01-01T00:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def normalize_mode(mode: int, *, is_dir: bool = False) -> int:
    """Collapse host permission bits: 0755 for directories and executables, 0644 otherwise.

    Host umasks (022 versus 077) and group-writable checkouts must not change a layer, so only
    "is it executable by its owner" survives from the host.
    """
    if is_dir:
        return DIR_MODE
    return EXEC_MODE if mode & stat.S_IXUSR else FILE_MODE


def canonical_json(value: Any, *, ascii_only: bool = False) -> bytes:
    """Canonical JSON bytes: sorted keys, no insignificant whitespace, UTF-8, no trailing newline.

    ``ascii_only`` writes non-ASCII characters as ``\\uXXXX`` escapes. Action keys and action-cache
    entries were defined that way before this module existed; writing their bytes otherwise would
    change the key of every action with a non-ASCII path or argument, so they keep it.
    """
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only).encode("utf-8")


def pretty_json(value: Any) -> str:
    """Stable human-readable JSON (sorted keys, 2-space indent, trailing newline) for lock files."""
    import json

    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def tar_header(
    name: str,
    *,
    kind: bytes,
    mode: int,
    size: int = 0,
    linkname: str = "",
    mtime: int = 0,
) -> bytes:
    """One deterministic tar header (ustar, with a PAX ``path``/``linkpath`` record when needed).

    ``kind`` is a :mod:`tarfile` type (``REGTYPE``, ``DIRTYPE``, ``SYMTYPE``, ``LNKTYPE``).
    Only the fields below vary; owner is 0:0 with empty names and no atime/ctime is written.
    """
    name_bytes, link_bytes = name.encode("utf-8", "surrogateescape"), linkname.encode("utf-8", "surrogateescape")
    size = size if kind == _REGTYPE else 0
    if (len(name_bytes) <= 100 and len(link_bytes) <= 100 and name_bytes.isascii() and link_bytes.isascii()
            and 0 <= mtime < 8**11 and size < 8**11):
        return _ustar_header(name_bytes, kind, mode, size, link_bytes, mtime)
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX only emits extended records for what does not fit ustar (long or non-ASCII names),
    # and tarfile never adds atime/ctime on its own.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _ustar_header(name: bytes, kind: bytes, mode: int, size: int, linkname: bytes, mtime: int) -> bytes:
    """The ustar header :mod:`tarfile` writes when no PAX record is needed, built directly.

    :mod:`tarfile` builds every header through a ``TarInfo`` and dictionaries; layers have
    thousands of members, so the common case (short ASCII names) skips that. The bytes are the
    same (``tests/unit/test_oci_determinism.py`` compares them).
    """
    header = bytearray(
        name.ljust(100, b"\0")
        + b"%07o\0" % (mode & 0o7777)
        + b"0000000\0" * 2  # uid, gid
        + b"%011o\0" % size
        + b"%011o\0" % mtime
        + b" " * 8  # checksum, filled in below
        + kind
        + linkname.ljust(100, b"\0")
        + b"ustar\x0000"
        + b"\0" * 64  # uname, gname
        + b"\0" * 16  # devmajor, devminor (empty unless a device node)
        + b"\0" * 155  # prefix
    ).ljust(BLOCK, b"\0")
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def tar_padding(size: int) -> bytes:
    """Zero bytes that pad ``size`` bytes of member data to a whole block."""
    rest = size % BLOCK
    return b"\0" * (BLOCK - rest) if rest else b""


def tar_trailer(written: int) -> bytes:
    """Two zero blocks, then padding to a whole record, for an archive of ``written`` bytes so far."""
    total = written + 2 * BLOCK
    rest = total % RECORD
    return b"\0" * (2 * BLOCK + (RECORD - rest if rest else 0))


#: The 10-byte gzip member header pbuild writes: deflate, no flags, mtime 0, XFL 0, OS 255 (unknown).
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
