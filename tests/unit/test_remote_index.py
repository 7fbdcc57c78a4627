"""The sha256 index and the known-present records: persistence, torn writes, expiry."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import xxhash
from pbuild.engine.remote import Sha256Index
from pbuild.engine.remote._index import KnownPresent


def _xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def test_each_content_is_hashed_once_across_builds(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"content")
    index = Sha256Index(str(tmp_path / "cache"))
    assert index  # callers write `if self.sha_index:`
    assert index.sha256_for(_xxh(b"content"), str(f)) == hashlib.sha256(b"content").hexdigest()
    index.save()

    # A later build: the file is gone, yet its sha256 is known from the xxh3 digest alone,
    # which proves it was not read again.
    f.unlink()
    later = Sha256Index(str(tmp_path / "cache"))
    assert later.sha256_for(_xxh(b"content"), str(f)) == hashlib.sha256(b"content").hexdigest()
    with pytest.raises(FileNotFoundError):
        later.sha256_for(_xxh(b"other"), str(f))


def test_torn_and_garbage_lines_are_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    good = f"{_xxh(b'a')} {hashlib.sha256(b'a').hexdigest()}\n"
    (cache / "sha256-index").write_text(good + "not a record\n" + f"{_xxh(b'b')} {hashlib.sha256(b'b').hexdigest()}")  # torn: no newline
    index = Sha256Index(str(cache))
    assert index.entries == 1 and index.get(_xxh(b"b")) is None
    with pytest.raises(ValueError):
        index.record("xyz", "abc")


def test_log_is_compacted_when_it_grows_stale(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    index = Sha256Index(str(cache))
    for round_ in range(6):
        for i in range(1024):
            # the same keys, remapped each round: the log grows, the live set does not
            index.record(f"{i:032x}", hashlib.sha256(f"{round_}-{i}".encode()).hexdigest())
        index.save()
    lines = (cache / "sha256-index").read_text().splitlines()
    assert len(lines) <= 4 * 1024 + 1024
    assert Sha256Index(str(cache)).get(f"{5:032x}") == hashlib.sha256(b"5-5").hexdigest()


def test_known_present_persists_expires_and_forgets(tmp_path: Path) -> None:
    path = str(tmp_path / "remote" / "present")
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    known = KnownPresent(path)
    known.add_blob(a)
    known.add_blob(b)
    known.add_result(a, b)
    known.forget_blob(b)
    known.save()

    again = KnownPresent(path)
    assert again.has_blob(a) and not again.has_blob(b)
    assert again.has_result(a, b) and not again.has_result(a, a)

    # Records older than the time-to-live are asked about again.
    old = time.time() - 7200
    with open(path, "a") as f:
        f.write(f"b {b} - {old:.0f}\n")
    assert not KnownPresent(path, ttl_s=3600).has_blob(b)
    assert KnownPresent(path, ttl_s=3600).has_blob(a)
    os.unlink(path)
    assert not KnownPresent(path).has_blob(a)


def test_known_present_log_is_compacted(tmp_path: Path) -> None:
    path = tmp_path / "present"
    known = KnownPresent(str(path))
    sha = hashlib.sha256(b"same").hexdigest()
    for _ in range(5000):  # the same blob recorded again and again
        known.add_blob(sha)
    known.save()
    assert len(path.read_text().splitlines()) == 1
    assert KnownPresent(str(path)).has_blob(sha)
