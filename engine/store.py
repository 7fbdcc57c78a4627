"""The local store: a content-addressed blob store (CAS) and an action cache (AC).

Layout under the cache dir::

    cas/ab/<xxh3>        read-only blob (mode 0444)
    cas/ab/<xxh3>.x      the same content, executable (0555): outputs keep their mode
    ac/ab/<key>          JSON: the outputs of the action with that key; its mtime is its last use

Every write goes to a temp file beside its destination and is renamed into place, so a crash or a
concurrent build never leaves a half-written entry visible. Blobs are verified against their
digest whenever they are about to be served from a state we cannot vouch for.

Outputs in pbuild-out are hard links to the blobs, so a ``chmod`` of an output changes the blob
too. The CAS does not trust a mode it did not set: the mode of a blob follows from its name
(0444, or 0555 for ``.x``), and :meth:`LocalStore.verify_blob` restores it with the content check.
An AC entry is data from outside the build (another machine, a shared folder): before it is
used, :func:`pbuild.engine.outputs.undeclared_outputs` holds it to exactly the outputs its action
declares. Blobs become files in pbuild-out in :mod:`pbuild.engine.materialize`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import marshal
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pbuild.engine.hashing import digest_file
from pbuild.lib import atomicio
from pbuild.lib.determinism import canonical_json
from pbuild.lib.digest import ContentDigest, DigestError, OciDigest, content_digest, oci_hex
from pbuild.lib.oci.blobstore import Fill, receive, sha256_of_file
from pbuild.tools.fstree import remove_tree


@dataclass(frozen=True)
class OutputRecord:
    """One output file of an action as stored in the AC."""

    path: str  # workspace-relative (pbuild-out/...)
    digest: ContentDigest
    size: int
    executable: bool


@dataclass(frozen=True)
class ActionResult:
    """What the AC remembers of an action. Directory outputs are listed file by file."""

    outputs: tuple[OutputRecord, ...]
    directories: tuple[str, ...] = ()  # directory outputs (their files are in ``outputs``)
    exit_code: int = 0
    stdout: str | None = None  # digest of captured stdout, if any

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "outputs": [[o.path, o.digest, o.size, o.executable] for o in self.outputs],
                "directories": list(self.directories),
                "exit_code": self.exit_code,
                "stdout": self.stdout,
            },
            ascii_only=True,
        )

    @classmethod
    def from_json(cls, data: bytes) -> ActionResult:
        """Parse an AC entry; raises ValueError, KeyError, TypeError or DigestError when damaged.

        Digests are checked: one names a blob path, and a damaged entry must not name another.
        """
        raw: Mapping[str, Any] = json.loads(data)
        return cls(
            outputs=tuple(OutputRecord(p, content_digest(d), int(s), bool(x)) for p, d, s, x in raw["outputs"]),
            directories=tuple(raw.get("directories", ())),
            exit_code=int(raw.get("exit_code", 0)),
            stdout=raw.get("stdout"),
        )


class LocalStore:
    """CAS and AC under ``root``. Safe for concurrent use by threads and processes."""

    def __init__(self, root: str, memo_path: str | None = None, uses_path: str | None = None) -> None:
        self.root = root
        # A per-workspace memo of the AC entries this workspace used, read in one go: a large
        # build would otherwise open one AC file per action just to learn nothing changed.
        # AC entries never change for a key, so the memo cannot go stale.
        self._memo_path = memo_path
        self._memo: dict[str, bytes] | None = None
        self._memo_dirty = False
        self.cas_dir = os.path.join(root, "cas")
        self.ac_dir = os.path.join(root, "ac")
        self.tmp_dir = os.path.join(root, "tmp")
        for d in (self.cas_dir, self.ac_dir, self.tmp_dir):
            try:
                os.makedirs(d, exist_ok=True)
                if not os.access(d, os.W_OK | os.X_OK):  # an existing cache made (or mounted) read-only
                    code = errno.EROFS if os.statvfs(d).f_flag & os.ST_RDONLY else errno.EACCES
                    raise OSError(code, os.strerror(code), d)
            except OSError as exc:
                from pbuild.engine.errors import WorkspaceError

                raise WorkspaceError(
                    f"cannot use cache dir {root}: {exc.strerror} ({exc.filename})",
                    hint="pass --cache-dir DIR (or set $PBUILD_CACHE / $XDG_CACHE_HOME) to a writable folder",
                ) from None
        self._made: set[str] = set()
        self._lock = threading.Lock()
        # Bytes this process wrote into the CAS and the AC: the size budget's estimate
        # (pbuild.engine.budget) grows by it, so that most builds need not measure the cache.
        self.bytes_added = 0
        # The AC keys this process used (hits and new entries), and when this workspace last
        # touched each entry (see touch_action).
        self.used_keys: set[str] = set()
        self._uses_path = uses_path
        self._uses: dict[str, int] | None = None
        self._uses_dirty = False
        self._now = time.time()

    # -- CAS -------------------------------------------------------------------------------

    def blob_path(self, digest: ContentDigest, executable: bool = False) -> str:
        return blob_path(self.cas_dir, digest, executable)

    def has_blob(self, digest: ContentDigest, executable: bool = False) -> bool:
        return os.path.exists(self.blob_path(digest, executable))

    def _ensure_dir(self, path: str) -> None:
        if path not in self._made:
            os.makedirs(path, exist_ok=True)
            with self._lock:
                self._made.add(path)

    def put_file(self, source: str, *, executable: bool, move: bool,
                 digest: ContentDigest | None = None) -> tuple[ContentDigest, int]:
        """Store ``source``'s content; returns (digest, size). With ``move``, the file is consumed.

        A blob already stored under that digest is replaced by these bytes (a rename when
        moving): they were just hashed, while the stored copy may have been damaged or had its
        mode changed since, and keeping it would hand those on.
        """
        if digest is None:
            digest, size = digest_file(source)
        else:
            size = os.path.getsize(source)
        dest = self.blob_path(digest, executable)
        self._ensure_dir(os.path.dirname(dest))
        with atomicio.temp_beside(dest) as tmp:
            if move:
                os.rename(source, tmp)  # atomicio-exempt: a consumed source moves to the temp name
            else:
                shutil.copyfile(source, tmp)
            os.chmod(tmp, blob_mode(executable))
            atomicio.publish_file(tmp, dest)
        with self._lock:
            self.bytes_added += size
        return digest, size

    def put_bytes(self, data: bytes, digest: ContentDigest) -> str:
        dest = self.blob_path(digest)
        if not os.path.exists(dest):
            self._ensure_dir(os.path.dirname(dest))
            atomicio.write_bytes(dest, data, mode=blob_mode(False))
            with self._lock:
                self.bytes_added += len(data)
        return dest

    def verify_blob(self, digest: ContentDigest, executable: bool = False) -> bool:
        """Re-hash a blob and restore its mode; a damaged one is deleted so it is rebuilt, never served.

        The mode is checked because outputs are hard links to blobs: a ``chmod`` of an output
        (``+w`` to edit it, ``-x``) would otherwise stay in the CAS and reach every later link.
        """
        path = self.blob_path(digest, executable)
        try:
            actual, _ = digest_file(path)
            if actual == digest:
                if stat.S_IMODE(os.stat(path).st_mode) != blob_mode(executable):
                    os.chmod(path, blob_mode(executable))
                return True
        except OSError:
            pass  # unreadable, or a mode we may not restore (another user's blob): not served
        try:
            os.unlink(path)
        except OSError:
            pass
        return False

    # -- AC --------------------------------------------------------------------------------

    def _ac_path(self, key: ContentDigest) -> str:
        return os.path.join(self.ac_dir, key[:2], key)

    def _load_memo(self) -> dict[str, bytes]:
        if self._memo is None:
            self._memo = _read_marshalled_dict(self._memo_path) if self._memo_path else {}
        return self._memo

    def get_action(self, key: ContentDigest) -> ActionResult | None:
        memo = self._load_memo()
        data = memo.get(key)
        if data is None:
            try:
                with open(self._ac_path(key), "rb") as handle:
                    data = handle.read()
            except OSError:
                return None
        try:
            result = ActionResult.from_json(data)
        except (ValueError, KeyError, TypeError, DigestError):
            memo.pop(key, None)
            return None  # a damaged entry is a miss; the action runs again and rewrites it
        if self._memo_path and key not in memo:
            with self._lock:
                memo[key] = data
                self._memo_dirty = True
        return result

    def touch_action(self, key: ContentDigest) -> None:
        """Record a use of the AC entry ``key`` (a cache hit): its mtime is its last use, which
        least-recently-used eviction (:mod:`pbuild.engine.cachegc`) ranks by. AC entries are
        touched, never blobs: blobs are hard-linked into pbuild-out, whose stamps record them.

        An hour is fine enough for eviction's order, and a metadata write per hit is not free
        (a thousand of them cost a one-change rebuild a few percent): with a ``uses_path``, the
        workspace remembers when it last touched each entry and touches it again only an hour
        later. What this process used is in :attr:`used_keys` either way (eviction after this
        build keeps it). An entry only the memo still holds (evicted meanwhile) has nothing to
        touch."""
        self.used_keys.add(key)
        uses = self._load_uses()
        now = int(self._now)
        if uses is not None:
            if now - uses.get(key, 0) < TOUCH_EVERY_S:
                return
            uses[key] = now
            self._uses_dirty = True
        try:
            os.utime(self._ac_path(key))
        except OSError:
            pass

    def _load_uses(self) -> dict[str, int] | None:
        if self._uses_path is None:
            return None
        if self._uses is None:
            self._uses = _read_marshalled_dict(self._uses_path)
        return self._uses

    def forget_action(self, key: ContentDigest) -> None:
        """Drop a key from the memo (its outputs turned out to be missing or damaged)."""
        memo = self._load_memo()
        if memo.pop(key, None) is not None:
            self._memo_dirty = True

    def save_memo(self) -> None:
        if self._uses_path and self._uses_dirty and self._uses is not None:
            os.makedirs(os.path.dirname(self._uses_path), exist_ok=True)
            with atomicio.writing(self._uses_path) as handle:
                marshal.dump(self._uses, handle)
            self._uses_dirty = False
        if not self._memo_path or not self._memo_dirty or self._memo is None:
            return
        os.makedirs(os.path.dirname(self._memo_path), exist_ok=True)
        with atomicio.writing(self._memo_path) as handle:
            marshal.dump(self._memo, handle)
        self._memo_dirty = False

    def put_action(self, key: ContentDigest, result: ActionResult) -> None:
        dest = self._ac_path(key)
        self._ensure_dir(os.path.dirname(dest))
        data = result.to_json()
        atomicio.write_bytes(dest, data)
        with self._lock:
            self.bytes_added += len(data)
            self.used_keys.add(key)
            uses = self._load_uses()
            if uses is not None:  # written just now: its mtime is this use
                uses[key] = int(self._now)
                self._uses_dirty = True
        if self._memo_path:
            memo = self._load_memo()
            with self._lock:
                memo[key] = data
                self._memo_dirty = True

    def remove_stale_tmp(self) -> None:
        """Remove temp dirs of pbuild processes that no longer run (killed builds)."""
        try:
            names = os.listdir(self.tmp_dir)
        except OSError:
            return
        for name in names:
            parts = name.split("-")
            if len(parts) < 3 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                # best effort: what cannot go now (another user's files) is retried next build
                remove_tree(os.path.join(self.tmp_dir, name), ignore_errors=True)
            except PermissionError:
                pass

    def new_tmp_dir(self, prefix: str = "x") -> str:
        path = os.path.join(self.tmp_dir, f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        os.makedirs(path)
        return path

    def expunge(self) -> None:
        """Remove everything (``pbuild clean --expunge``); an ``OSError`` names what could not go."""
        # gc.lock stays: a build waiting on it would hold a lock on a file no one else can see.
        for sub in ("cas", "ac", "tmp", "index", OCI_INDEX_DIR, "gc.usage"):
            remove_tree(os.path.join(self.root, sub))


#: Below the cache dir: ``oci/sha256/<hex>`` holds the CAS digest of the blob with that OCI digest.
OCI_INDEX_DIR = "oci"


class OciBlobs:
    """Pulled OCI blobs kept in the CAS (a :class:`pbuild.lib.oci.blobstore.BlobStore`).

    The CAS names blobs by xxh3; a registry by sha256. ``oci/sha256/<hex>`` maps one to the
    other, and the bytes live once, in the CAS, under ``--cache-dir``. Each blob is re-hashed
    (sha256) whenever it is served: the map and the blob are data a crash or a user may damage.
    """

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.dir = os.path.join(store.root, OCI_INDEX_DIR, "sha256")

    def _entry(self, digest: OciDigest) -> str:
        return os.path.join(self.dir, oci_hex(digest))

    def get(self, digest: OciDigest, size: int | None) -> str | None:
        entry = self._entry(digest)
        try:
            with open(entry, encoding="ascii") as handle:
                text = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        try:  # it becomes a path: a damaged map must not point out of the CAS
            cas_digest = content_digest(text)
        except DigestError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry)
            return None
        path = self.store.blob_path(cas_digest)
        try:
            good = sha256_of_file(path) == digest and (size is None or os.path.getsize(path) == size)
        except OSError:
            good = False
        if good:
            return path
        self.store.verify_blob(cas_digest)  # drops the CAS blob if its own digest is wrong too
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
        return None

    def put(self, digest: OciDigest, size: int | None, fill: Fill) -> str:
        scratch = self.store.new_tmp_dir("oci")
        try:
            received = os.path.join(scratch, "blob")
            receive(received, digest, size, fill)
            cas_digest, _ = self.store.put_file(received, executable=False, move=True)
        finally:
            remove_tree(scratch, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)
        atomicio.write_text(self._entry(digest), cas_digest + "\n")
        return self.store.blob_path(cas_digest)


#: How long a touched AC entry counts as just used before a hit touches it again.
TOUCH_EVERY_S = 3600


def blob_path(cas_dir: str, digest: ContentDigest, executable: bool) -> str:
    """Where the CAS under ``cas_dir`` keeps the blob ``digest`` (``.x``: its executable copy)."""
    return os.path.join(cas_dir, digest[:2], digest + (".x" if executable else ""))


def _read_marshalled_dict(path: str) -> dict[Any, Any]:
    """A per-workspace side file (the AC memo, the last-use notes), or {} when it is missing or
    damaged: both are hints the build can do without."""
    try:
        with open(path, "rb") as handle:
            data = marshal.loads(handle.read())  # from bytes: load(handle) reads value by value
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def blob_mode(executable: bool) -> int:
    """The mode the CAS gives a blob: read-only, and executable for ``.x`` blobs."""
    return 0o555 if executable else 0o444
