"""File digests (xxh3-128) with a persistent stat index, and the host fingerprint.

The stat index maps a path to (size, mtime_ns, ctime_ns, inode) and the digest seen for that
state, so a no-op build reads no file contents. A file modified in the same instant it was
indexed could keep its stat, so entries younger than ``_RACY_NS`` are not trusted (the "racily
clean" problem git also guards against).
"""

from __future__ import annotations

import marshal
import os
import platform
import threading
import time
from typing import TYPE_CHECKING, cast

import xxhash
from pbuild.lib import atomicio

if TYPE_CHECKING:  # not imported at run time: this module is on the no-op build's path
    from pbuild.lib.digest import ContentDigest

_CHUNK = 1 << 20
# A file written within the filesystem's timestamp granularity (a few ms) of being indexed could
# change again without changing its stat; entries younger than this are re-checked next time.
_RACY_NS = 100_000_000
_INDEX_VERSION = 1


def digest_bytes(data: bytes) -> ContentDigest:
    """The xxh3-128 content digest of ``data``."""
    return cast("ContentDigest", xxhash.xxh3_128_hexdigest(data))


def digest_file(path: str) -> tuple[ContentDigest, int]:
    """xxh3-128 hex digest and size of a file's contents."""
    hasher = xxhash.xxh3_128()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            hasher.update(chunk)
    return cast("ContentDigest", hasher.hexdigest()), size


StatKey = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatIndex:
    """Persistent ``path -> (stat key, digest)``; thread-safe; saved atomically."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[StatKey, ContentDigest]] = {}
        self._dirty = False
        self._volatile: set[str] = set()
        self.hashed_files = 0
        try:
            with open(path, "rb") as handle:
                version, entries = marshal.loads(handle.read())  # from bytes: load(handle) reads value by value
            if version == _INDEX_VERSION:
                self._entries = entries
        except (OSError, ValueError, EOFError, TypeError):
            pass  # a missing or damaged index only costs re-hashing

    def digest(self, path: str) -> ContentDigest:
        """The digest of ``path`` (absolute), from the index when its stat is unchanged."""
        return self.digest_with_key(path)[0]

    def digest_with_key(self, path: str) -> tuple[ContentDigest, StatKey]:
        """The digest of ``path`` and the stat it was taken at."""
        st = os.stat(path)
        key = stat_key(st)
        entry = self._entries.get(path)
        if entry is not None and entry[0] == key:
            return entry[1], key
        digest, _ = digest_file(path)
        self.hashed_files += 1
        self.record(path, st, digest)
        return digest, key

    def lookup(self, path: str) -> ContentDigest | None:
        """The indexed digest if the file's stat still matches, else None (never reads the file)."""
        entry = self._entries.get(path)
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return entry[1] if entry[0] == stat_key(st) else None

    def refresh_ctime(self, path: str) -> None:
        """Accept a new ctime for ``path`` if size, mtime and inode are as indexed.

        Called right after an action whose exec root hard-linked this output's CAS blob: linking
        and unlinking change the shared inode's ctime, nothing else. Outside that window a
        changed ctime still means the file may have been written.
        """
        entry = self._entries.get(path)
        if entry is None:
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        size, mtime, _, ino = entry[0]
        if (st.st_size, st.st_mtime_ns, st.st_ino) == (size, mtime, ino):
            with self._lock:
                self._entries[path] = (stat_key(st), entry[1])
                self._dirty = True

    def record(self, path: str, st: os.stat_result, digest: ContentDigest, *, output: bool = False) -> None:
        """Remember ``path``'s digest at stat ``st``. ``output`` marks pbuild's own read-only links
        to CAS blobs, which nobody edits in the same instant, so they are saved even when fresh."""
        if not output and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
            # Too fresh to trust on the next run; remember for this run only.
            with self._lock:
                self._entries[path] = (stat_key(st), digest)
                self._dirty = True
                self._volatile.add(path)
            return
        with self._lock:
            self._entries[path] = (stat_key(st), digest)
            self._dirty = True

    def forget(self, path: str) -> None:
        with self._lock:
            if self._entries.pop(path, None) is not None:
                self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        with self._lock:
            entries = {k: v for k, v in self._entries.items() if k not in self._volatile}
            self._dirty = False
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        with atomicio.writing(self._path) as handle:
            marshal.dump((_INDEX_VERSION, entries), handle)


_FINGERPRINT: str | None = None
# Where sandboxed actions look for host tools (engine/execroot.py SANDBOX_PATH).
_TOOL_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


def _host_python() -> str:
    """The python3 that actions run (first on the sandbox's PATH): its real name and size.

    The size changes with every build of the interpreter, so an upgraded python3 changes the
    keys of actions that run it; pbuild's own interpreter does not matter here.
    """
    for folder in _TOOL_PATH:
        candidate = os.path.join(folder, "python3")
        if os.path.exists(candidate):
            real = os.path.realpath(candidate)
            try:
                return f"{os.path.basename(real)}:{os.stat(real).st_size}"
            except OSError:
                break
    return "no-python3"


def host_fingerprint() -> str:
    """What makes host tools behave differently: architecture, libc, OS release, the host python3."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        os_release = ""
        try:
            with open("/etc/os-release", encoding="utf-8") as handle:
                fields = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
            os_release = f"{fields.get('ID', '')}-{fields.get('VERSION_ID', '')}".replace('"', "")
        except OSError:
            pass
        try:
            libc = os.confstr("CS_GNU_LIBC_VERSION") or "unknown-libc"
        except (ValueError, OSError):
            libc = "unknown-libc"
        _FINGERPRINT = "|".join([platform.machine(), libc, os_release, _host_python()])
    return _FINGERPRINT
