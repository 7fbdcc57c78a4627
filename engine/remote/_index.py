"""Small persistent indexes under the cache directory.

Both are append-only text logs: one record per line, loaded into memory at start, new records
appended with a single ``O_APPEND`` write on :meth:`save`. A crash can at worst leave a torn
last line, which fails validation on the next load and is ignored, so no damaged entry is ever
used; concurrent builds appending to one log interleave whole lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time

from pbuild.lib import atomicio

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_COMPACT_FACTOR = 4  # rewrite a log when it holds this many times more lines than live records


def sha256_file(path: str) -> tuple[str, int]:
    """The sha256 hex digest and the size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _read_lines(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    # A last line without its newline is a torn write: drop it.
    lines = text.split("\n")[:-1]
    return [line.split(" ") for line in lines]


def _append(path: str, lines: list[str]) -> None:
    if not lines:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, "".join(lines).encode("ascii"))
    finally:
        os.close(fd)


def _rewrite(path: str, lines: list[str]) -> None:
    atomicio.write_bytes(path, "".join(lines).encode("ascii"))


class Sha256Index:
    """Maps the engine's xxh3-128 content digest to the sha256 of the same bytes.

    Persisted in ``<cache_dir>/sha256-index`` so a file whose content is unchanged is hashed
    with sha256 once, ever. Thread-safe.
    """

    def __init__(self, cache_dir: str) -> None:
        self._path = os.path.join(cache_dir, "sha256-index")
        self._lock = threading.Lock()
        self._map: dict[str, str] = {}
        self._new: list[str] = []
        self._lines_on_disk = 0
        for record in _read_lines(self._path):
            self._lines_on_disk += 1
            if len(record) == 2 and _HEX32.fullmatch(record[0]) and _HEX64.fullmatch(record[1]):
                self._map[record[0]] = record[1]

    @property
    def entries(self) -> int:
        """How many pairs are known. (Not ``__len__``: an empty index must still be truthy.)"""
        return len(self._map)

    def get(self, xxh3_hex: str) -> str | None:
        """The sha256 recorded for ``xxh3_hex``, if any."""
        with self._lock:
            return self._map.get(xxh3_hex)

    def sha256_for(self, xxh3_hex: str, path: str) -> str:
        """The sha256 of the file at ``path`` whose xxh3-128 digest is ``xxh3_hex``."""
        with self._lock:
            known = self._map.get(xxh3_hex)
        if known is not None:
            return known
        sha, _ = sha256_file(path)
        self.record(xxh3_hex, sha)
        return sha

    def record(self, xxh3_hex: str, sha256_hex: str) -> None:
        """Remember a pair computed elsewhere (e.g. for a blob just downloaded and verified)."""
        if not _HEX32.fullmatch(xxh3_hex) or not _HEX64.fullmatch(sha256_hex):
            raise ValueError(f"not an xxh3-128/sha256 hex pair: {xxh3_hex!r} {sha256_hex!r}")
        with self._lock:
            if self._map.get(xxh3_hex) != sha256_hex:
                self._map[xxh3_hex] = sha256_hex
                self._new.append(f"{xxh3_hex} {sha256_hex}\n")

    def remember(self, xxh3_hex: str, sha256_hex: str) -> None:
        """The engine's name for :meth:`record`, used after a verified remote download."""
        self.record(xxh3_hex, sha256_hex)

    def save(self) -> None:
        """Append the pairs learned since the last save (compacting a log that grew stale)."""
        with self._lock:
            new, self._new = self._new, []
            if self._lines_on_disk + len(new) > _COMPACT_FACTOR * max(len(self._map), 1024):
                _rewrite(self._path, [f"{k} {v}\n" for k, v in sorted(self._map.items())])
                self._lines_on_disk = len(self._map)
                return
            self._lines_on_disk += len(new)
        _append(self._path, new)


class KnownPresent:
    """Blobs and action results known to be stored on one remote, persisted per remote.

    Remembering them makes an unchanged rebuild upload nothing without asking the server.
    Records expire after ``ttl_s`` so a server that lost data (eviction, a wiped cache) is asked
    again, and an action result is only written after its blobs were uploaded or confirmed
    within that window. Each record is ``<kind> <sha256> <extra> <epoch seconds>``: kind ``b``
    (blob) or ``a`` (action result, extra = sha256 of the encoded result).
    """

    def __init__(self, path: str, *, ttl_s: float = 6 * 3600) -> None:
        self._path = path
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._blobs: dict[str, float] = {}
        self._results: dict[str, tuple[str, float]] = {}
        self._new: list[str] = []
        now = time.time()
        records = _read_lines(path)
        self._lines_on_disk = len(records)
        for record in records:
            if len(record) != 4 or record[0] not in ("a", "b") or not _HEX64.fullmatch(record[1]):
                continue
            try:
                stamp = float(record[3])
            except ValueError:
                continue
            if now - stamp > self._ttl:
                # Expired, or a later "forget" record (stamp 0) overriding an earlier one.
                (self._blobs if record[0] == "b" else self._results).pop(record[1], None)
                continue
            if record[0] == "b":
                self._blobs[record[1]] = stamp
            elif _HEX64.fullmatch(record[2]):
                self._results[record[1]] = (record[2], stamp)

    def has_blob(self, sha256_hex: str) -> bool:
        with self._lock:
            stamp = self._blobs.get(sha256_hex)
        return stamp is not None and time.time() - stamp <= self._ttl

    def add_blob(self, sha256_hex: str) -> None:
        now = time.time()
        with self._lock:
            self._blobs[sha256_hex] = now
            self._new.append(f"b {sha256_hex} - {now:.0f}\n")

    def forget_blob(self, sha256_hex: str) -> None:
        """The server answered that it lacks this blob: stop trusting our record of it."""
        with self._lock:
            if self._blobs.pop(sha256_hex, None) is not None:
                self._new.append(f"b {sha256_hex} - 0\n")

    def has_result(self, key_sha256: str, encoded_sha256: str) -> bool:
        with self._lock:
            entry = self._results.get(key_sha256)
        return entry is not None and entry[0] == encoded_sha256 and time.time() - entry[1] <= self._ttl

    def forget_result(self, key_sha256: str, unless_encoded: str) -> None:
        """The server now holds another result for this key (replaced, or poisoned): stop
        trusting our record of the one we uploaded, unless it is the same (``unless_encoded``)."""
        with self._lock:
            entry = self._results.get(key_sha256)
            if entry is not None and entry[0] != unless_encoded:
                del self._results[key_sha256]
                self._new.append(f"a {key_sha256} {entry[0]} 0\n")

    def add_result(self, key_sha256: str, encoded_sha256: str) -> None:
        now = time.time()
        with self._lock:
            self._results[key_sha256] = (encoded_sha256, now)
            self._new.append(f"a {key_sha256} {encoded_sha256} {now:.0f}\n")

    def save(self) -> None:
        """Append the records made since the last save; rewrite a log that is mostly stale."""
        with self._lock:
            new, self._new = self._new, []
            live = len(self._blobs) + len(self._results)
            compact = self._lines_on_disk + len(new) > _COMPACT_FACTOR * max(live, 1024)
            if compact:
                lines = [f"b {sha} - {stamp:.0f}\n" for sha, stamp in sorted(self._blobs.items())]
                lines += [f"a {key} {enc} {stamp:.0f}\n" for key, (enc, stamp) in sorted(self._results.items())]
                self._lines_on_disk = len(lines)
            else:
                self._lines_on_disk += len(new)
        # Losing this memory only costs re-checking blobs next time.
        with contextlib.suppress(OSError):
            if compact:
                os.makedirs(os.path.dirname(self._path), exist_ok=True)
                _rewrite(self._path, lines)
            else:
                _append(self._path, new)
