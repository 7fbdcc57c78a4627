"""Write one deterministic layer: a sorted tar stream, compressed in parallel, hashed once.

The tar stream is cut into fixed-size chunks (fixed sizes, so the bytes never depend on the
number of threads). For gzip each chunk is deflated on its own thread with the previous 32 KiB
as its dictionary and ends on a byte boundary (a sync flush), so the pieces concatenate into a
single valid deflate stream; zlib releases the GIL while it compresses. The uncompressed
stream's sha256 (the diff_id) and crc32 are computed in order on a separate thread, as are the
compressed blob's sha256 and the write to disk.
"""

from __future__ import annotations

import collections
import hashlib
import os
import posixpath
import stat
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pbuild.engine.errors import PbuildError
from pbuild.lib import determinism

#: Bytes of uncompressed tar per compression task.
CHUNK = 1 << 20
#: deflate's window: each chunk is primed with this much of the previous one.
WINDOW = 32 * 1024

MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}


class LayerEntriesError(PbuildError):
    """Layer entries that cannot form one tar (two entries at one path, a path escaping the root).

    A fault of the layer being built; a built layer the launcher will not unpack is its
    :class:`~pbuild.tools.launcher.errors.RefusedLayer`.
    """


@dataclass(frozen=True)
class LayerEntry:
    """One member of a layer. ``path`` is relative to the image root, without a leading ``/``.

    A ``file`` takes its bytes from ``data`` or from the host file ``source``; ``symlink`` and
    ``hardlink`` use ``target``. ``origin`` says where the entry came from, for error messages.
    """

    path: str
    kind: str
    mode: int
    source: str | None = None
    data: bytes | None = None
    target: str = ""
    origin: str = ""

    def same_as(self, other: LayerEntry) -> bool:
        """True when two entries would write identical members (directories usually do)."""
        return (self.kind, self.mode, self.target) == (other.kind, other.mode, other.target) and (
            self.kind != "file" or (self.source, self.data) == (other.source, other.data)
        )


@dataclass(frozen=True)
class LayerDigests:
    """What the image needs to know about a written layer blob."""

    diff_id: str
    digest: str
    size: int
    media_type: str

    def to_json(self) -> dict[str, object]:
        return {"diff_id": self.diff_id, "digest": self.digest, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LayerDigests:
        return cls(str(data["diff_id"]), str(data["digest"]), int(str(data["size"])), str(data["media_type"]))


def clean_path(path: str, *, origin: str = "") -> str:
    """Normalize an in-image path (``/usr/bin/x``, ``./usr/bin/x`` → ``usr/bin/x``); refuse ``..``."""
    stripped = path.strip()
    while stripped.startswith("./"):
        stripped = stripped[2:]
    parts = [p for p in stripped.split("/") if p not in ("", ".")]
    if ".." in parts:
        where = f" (from {origin})" if origin else ""
        raise LayerEntriesError(
            f"destination {path!r}{where} escapes the image root",
            hint="destinations are paths inside the image; remove '..' components",
        )
    return "/".join(parts)


def check_link_target(entry: LayerEntry) -> None:
    """Refuse a hard link whose target leaves the root (symlinks may point anywhere: they resolve in the image)."""
    if entry.kind == "hardlink":
        clean_path(entry.target, origin=entry.origin or entry.path)


def merge_entries(entries: Iterable[LayerEntry], *, add_parents: bool = True) -> list[LayerEntry]:
    """Sort entries by path, add missing parent directories, and refuse two different entries at one path.

    Every conflict is gathered and reported at once.
    """
    by_path: dict[str, LayerEntry] = {}
    conflicts: list[str] = []
    for entry in entries:
        path = clean_path(entry.path, origin=entry.origin)
        if not path:
            continue  # the root itself is never a member
        if path != entry.path:
            entry = LayerEntry(path, entry.kind, entry.mode, entry.source, entry.data, entry.target, entry.origin)
        check_link_target(entry)
        previous = by_path.get(path)
        if previous is not None and not previous.same_as(entry):
            conflicts.append(f"/{path}: {previous.origin or previous.kind} and {entry.origin or entry.kind}")
            continue
        by_path[path] = entry
    if conflicts:
        raise LayerEntriesError(
            "two layer entries at one path:\n    " + "\n    ".join(sorted(conflicts)),
            hint="give each file one destination (change a prefix, or drop one of the sources)",
        )
    if add_parents:
        for path in list(by_path):
            parent = posixpath.dirname(path)
            while parent and parent not in by_path:
                by_path[parent] = LayerEntry(parent, "dir", determinism.DIR_MODE, origin="parent directory")
                parent = posixpath.dirname(parent)
            if parent and by_path[parent].kind != "dir":
                raise LayerEntriesError(
                    f"/{path} lies below /{parent}, which is a {by_path[parent].kind}, not a directory",
                    hint="a path cannot be both a file and a directory",
                )
    # Sort by the UTF-8 bytes so the order never depends on the locale.
    return [by_path[p] for p in sorted(by_path, key=lambda p: p.encode("utf-8", "surrogateescape"))]


def entries_from_tree(root: str, *, prefix: str = "", origin: str = "") -> list[LayerEntry]:
    """Every file, symlink and directory below the host directory ``root``, placed below ``prefix``.

    Modes are normalized; symlinks are kept as symlinks with their target unchanged.
    """
    out: list[LayerEntry] = []
    base = clean_path(prefix)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        for name in sorted(dirnames + filenames):
            host = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            dest = f"{base}/{rel}" if base else rel
            st = os.lstat(host)
            where = origin or host
            if stat.S_ISLNK(st.st_mode):
                out.append(LayerEntry(dest, "symlink", 0o777, target=os.readlink(host), origin=where))
            elif stat.S_ISDIR(st.st_mode):
                out.append(LayerEntry(dest, "dir", determinism.DIR_MODE, origin=where))
            elif stat.S_ISREG(st.st_mode):
                mode = determinism.normalize_mode(st.st_mode)
                out.append(LayerEntry(dest, "file", mode, source=host, origin=where))
            else:
                raise LayerEntriesError(f"{host} is neither a file, a directory nor a symlink", hint="layers hold only those")
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def _member_bytes(entry: LayerEntry, mtime: int) -> Iterator[bytes]:
    """The header and padded data of one entry."""
    kind = _KINDS[entry.kind]
    name = entry.path + "/" if entry.kind == "dir" else entry.path
    if entry.kind != "file":
        yield determinism.tar_header(name, kind=kind, mode=entry.mode, linkname=entry.target, mtime=mtime)
        return
    if entry.data is not None:
        data = entry.data
    else:
        assert entry.source is not None
        with open(entry.source, "rb") as handle:
            data = handle.read()
    yield determinism.tar_header(name, kind=kind, mode=entry.mode, size=len(data), mtime=mtime)
    yield data
    yield determinism.tar_padding(len(data))


def tar_stream(entries: Iterable[LayerEntry], *, mtime: int) -> Iterator[bytes]:
    """The tar archive of already merged (sorted) entries, as a sequence of byte strings."""
    written = 0
    for entry in entries:
        for piece in _member_bytes(entry, mtime):
            written += len(piece)
            yield piece
    yield determinism.tar_trailer(written)


def _chunks(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a byte stream into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    for piece in pieces:
        if not buffer and len(piece) == size:
            yield piece
            continue
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _deflate(chunk: bytes, dictionary: bytes, last: bool, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY,
                                  **({"zdict": dictionary} if dictionary else {}))
    return compressor.compress(chunk) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class _Sink:
    """Hashes and writes the compressed blob in order, on its own thread."""

    def __init__(self, path: str) -> None:
        self.handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
        self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def write_layer(
    entries: Iterable[LayerEntry],
    out_path: str,
    *,
    compression: str = "gzip",
    level: int | None = None,
    mtime: int = 0,
    jobs: int = 1,
    merged: bool = False,
) -> LayerDigests:
    """Write ``entries`` as one layer blob at ``out_path`` and return its digests.

    ``entries`` are merged (sorted, parents added, conflicts refused) unless ``merged`` says the
    caller did it. ``jobs`` is the number of compression threads; it never changes the bytes.
    """
    if compression not in MEDIA_TYPES:
        raise LayerEntriesError(f"unknown compression {compression!r}", hint="use one of: none, gzip, zstd")
    members = list(entries) if merged else merge_entries(entries)
    pieces = tar_stream(members, mtime=mtime)
    if compression == "gzip":
        return _write_gzip(pieces, out_path, level=6 if level is None else level, jobs=jobs)
    if compression == "zstd":
        return _write_zstd(pieces, out_path, level=3 if level is None else level, jobs=jobs)
    sink = _Sink(out_path)
    try:
        for piece in pieces:
            sink.write(piece)
    finally:
        sink.close()
    digest = "sha256:" + sink.sha.hexdigest()
    return LayerDigests(digest, digest, sink.size, MEDIA_TYPES["none"])


def _write_gzip(pieces: Iterable[bytes], out_path: str, *, level: int, jobs: int) -> LayerDigests:
    sink = _Sink(out_path)
    raw_sha = hashlib.sha256()
    state = {"crc": 0, "size": 0}

    def hash_raw(chunk: bytes) -> None:
        raw_sha.update(chunk)
        state["crc"] = zlib.crc32(chunk, state["crc"])
        state["size"] += len(chunk)

    workers = max(1, jobs)
    pending: collections.deque[Future[bytes]] = collections.deque()
    try:
        with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as raw_lane, ThreadPoolExecutor(1) as out_lane:
            out_lane.submit(sink.write, determinism.GZIP_HEADER)
            previous: bytes | None = None
            dictionary = b""
            for chunk in _chunks(pieces, CHUNK):
                raw_lane.submit(hash_raw, chunk)
                if previous is not None:
                    pending.append(pool.submit(_deflate, previous, dictionary, False, level))
                    dictionary = previous[-WINDOW:]
                previous = chunk
                while len(pending) > 2 * workers:
                    out_lane.submit(sink.write, pending.popleft().result())
            pending.append(pool.submit(_deflate, previous or b"", dictionary, True, level))
            while pending:
                out_lane.submit(sink.write, pending.popleft().result())
            raw_lane.shutdown(wait=True)
            out_lane.submit(sink.write, struct.pack("<II", state["crc"] & 0xFFFFFFFF, state["size"] & 0xFFFFFFFF))
    finally:
        sink.close()
    return LayerDigests("sha256:" + raw_sha.hexdigest(), "sha256:" + sink.sha.hexdigest(), sink.size,
                        MEDIA_TYPES["gzip"])


def _write_zstd(pieces: Iterable[bytes], out_path: str, *, level: int, jobs: int) -> LayerDigests:
    import zstandard

    sink = _Sink(out_path)
    raw_sha = hashlib.sha256()
    # Always in zstd's multi-threaded mode (threads ≥ 1): its output then does not depend on the
    # number of worker threads, whereas single-threaded mode (threads=0) frames differently.
    compressor = zstandard.ZstdCompressor(level=level, threads=max(1, jobs), write_content_size=False)
    try:
        with compressor.stream_writer(sink, closefd=False) as writer:  # type: ignore[arg-type]
            for chunk in _chunks(pieces, CHUNK):
                raw_sha.update(chunk)
                writer.write(chunk)
    finally:
        sink.close()
    return LayerDigests("sha256:" + raw_sha.hexdigest(), "sha256:" + sink.sha.hexdigest(), sink.size,
                        MEDIA_TYPES["zstd"])
