"""Unpack one layer tar into a directory, safely, in the form overlayfs stacks.

Every path is resolved inside the layer directory (:mod:`inroot`, the walk the flattened root
filesystem uses too), never through a link out of it:
- a ``..`` component refuses the layer; a leading ``/`` is dropped (the path stays inside);
- a symlink on the way is followed as if the layer were ``/`` (an entry ``link/passwd`` with
  ``link -> /etc`` or ``-> ../../etc`` lands in the layer's own ``etc``), as in a container;
  the entry's own name is never followed: it is replaced;
- a hardlink must name a regular file already unpacked in this layer, found the same way;
- device nodes are skipped with a warning; setuid/setgid bits are kept only when asked (root,
  into a private layer store);
- OCI whiteouts become overlayfs whiteouts (a 0:0 character device) and opaque directories get
  the ``user.overlay.opaque`` xattr that overlayfs reads when mounted with ``userxattr``.

The uncompressed stream is hashed on the way, and the layer is refused unless the digest
equals the diff_id the image config promised.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, cast

from pbuild.tools.fstree import remove_at
from pbuild.tools.launcher.errors import RefusedLayer
from pbuild.tools.launcher.inroot import DIR_FLAGS, RootDir

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "user.overlay.opaque"


@dataclass
class ExtractReport:
    """What extraction neutralized, for a one-line notice to the user."""

    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _HashingReader:
    """Wraps the decompressed stream and hashes every byte tarfile reads."""

    def __init__(self, stream: IO[bytes], algorithm: str) -> None:
        self._stream = stream
        self.hash = hashlib.new(algorithm)

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def decompressor(raw: IO[bytes], media_type: str) -> IO[bytes]:
    """The decompressed view of a layer blob, by media type or, failing that, magic bytes;
    a damaged compressed stream raises :class:`RefusedLayer`."""
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[type-var]
    magic = buffered.peek(4)[:4]
    if media_type.endswith("+zstd") or magic == b"\x28\xb5\x2f\xfd":
        import zstandard

        zstd = zstandard.ZstdDecompressor().stream_reader(buffered)
        return cast(IO[bytes], _Decompressed(zstd, "zstd", (zstandard.ZstdError,)))
    if media_type.endswith("+gzip") or magic[:2] == b"\x1f\x8b":
        import gzip
        import zlib

        gz = gzip.GzipFile(fileobj=buffered, mode="rb")
        return cast(IO[bytes], _Decompressed(gz, "gzip", (EOFError, zlib.error, gzip.BadGzipFile)))
    return buffered


class _Decompressed:
    """A decompressing stream whose format errors are :class:`RefusedLayer`: a message."""

    def __init__(self, stream: Any, kind: str, errors: tuple[type[BaseException], ...]) -> None:
        self._stream = stream
        self._kind = kind
        self._errors = errors

    def read(self, n: int = -1) -> bytes:
        try:
            return self._stream.read(n)  # type: ignore[no-any-return]
        except self._errors as e:
            raise RefusedLayer(
                f"a layer blob is not a valid {self._kind} stream: {e}",
                hint="the image is damaged; rebuild or re-pull it",
            ) from None


def _clean_name(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RefusedLayer(f"layer entry {name!r} contains '..'", hint="the image is malformed or hostile")
    return parts


class _Tree:
    """The layer root, every path resolved inside it (:class:`inroot.RootDir`)."""

    def __init__(self, root: str) -> None:
        self.root = RootDir(root)
        self.dir_modes: list[tuple[list[str], int]] = []

    def close(self) -> None:
        self.root.close()

    def open_dir(self, parts: list[str], create: bool, entry: str) -> int:
        """An fd for the directory ``parts`` below the root; missing ones made when ``create``."""
        try:
            return self.root.open_dir(parts, create=create)
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                what = "a loop of symbolic links" if e.errno == errno.ELOOP else "a file"
                raise RefusedLayer(
                    f"layer entry {entry!r} goes through {e.filename!r}, which is {what}, not a directory",
                    hint="the image is malformed; nothing was written outside the layer",
                ) from None
            raise


def extract_layer(
    stream: IO[bytes],
    dest: str,
    *,
    diff_id: str,
    privileged: bool,
    keep_setid: bool | None = None,
    make_whiteout: Callable[[str, int], None] | None = None,
) -> ExtractReport:
    """Unpack the uncompressed layer ``stream`` into the existing empty directory ``dest``.

    ``privileged`` (running as real root) keeps owners; ``keep_setid`` (default: the same)
    keeps setuid and setgid bits. Raises :class:`RefusedLayer` for a hostile entry or a digest
    that is not ``diff_id``.
    """
    algorithm, _, expected = diff_id.partition(":")
    if algorithm not in ("sha256", "sha512") or not expected:
        raise RefusedLayer(f"malformed diff_id {diff_id!r} in the image config")
    reader = _HashingReader(stream, algorithm)
    report = ExtractReport()
    tree = _Tree(dest)
    whiteout = make_whiteout or _mknod_whiteout
    setid = privileged if keep_setid is None else keep_setid
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                _extract_member(archive, member, tree, privileged, setid, whiteout, report)
        reader.drain()  # trailing padding after the end-of-archive blocks is part of the digest
        for parts, mode in reversed(tree.dir_modes):  # deepest first; modes may drop our write bit
            _chmod_dir(tree, parts, mode)
    except tarfile.TarError as e:
        raise RefusedLayer(f"layer {diff_id} is not a valid tar archive: {e}") from None
    finally:
        tree.close()
    actual = reader.hash.hexdigest()
    if actual != expected:
        raise RefusedLayer(
            f"layer content has digest {algorithm}:{actual}, but the image config promises {diff_id}",
            hint="the image is damaged; rebuild or re-pull it",
        )
    return report


def _chmod_dir(tree: _Tree, parts: list[str], mode: int) -> None:
    """Give the directory entry ``parts`` its mode, unless a later entry replaced it."""
    try:
        parent = tree.root.open_dir(parts[:-1])
    except OSError:
        return  # a later entry of the layer removed or replaced a parent
    try:
        fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
    except OSError:
        return  # now a link or a file: a later entry of the layer took its name
    finally:
        os.close(parent)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _mknod_whiteout(name: str, dir_fd: int) -> None:
    # A 0:0 character device is overlayfs's whiteout; the kernel lets anyone create this one
    # device (Linux >= 5.8), so it works unprivileged too.
    os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dir_fd)


def _extract_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    tree: _Tree,
    privileged: bool,
    setid: bool,
    whiteout: Callable[[str, int], None],
    report: ExtractReport,
) -> None:
    parts = _clean_name(member.name)
    if not parts:
        return  # the root itself ("./")
    parent_parts, base = parts[:-1], parts[-1]
    if base == OPAQUE_MARKER:
        fd = tree.open_dir(parent_parts, create=True, entry=member.name)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        return
    parent = tree.open_dir(parent_parts, create=True, entry=member.name)
    try:
        if base.startswith(WHITEOUT_PREFIX):
            target = base[len(WHITEOUT_PREFIX) :]
            if not target or target in (".", ".."):
                raise RefusedLayer(f"layer entry {member.name!r} is a malformed whiteout")
            remove_at(parent, target)
            whiteout(target, parent)
            return
        mode = member.mode & 0o7777
        if not setid:
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        if member.isdir():
            try:
                st = os.stat(base, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    remove_at(parent, base)
                    os.mkdir(base, 0o755, dir_fd=parent)
            except FileNotFoundError:
                os.mkdir(base, 0o755, dir_fd=parent)
            tree.dir_modes.append((parts, mode | 0o700 if not privileged else mode))
            _own(base, parent, member, privileged)
            return
        remove_at(parent, base)
        if member.isreg():
            source = archive.extractfile(member)
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            try:
                if source is not None:
                    while chunk := source.read(1 << 20):
                        os.write(fd, chunk)
                if privileged:  # before the mode: chown clears setuid bits
                    os.fchown(fd, member.uid, member.gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.utime(base, ns=(int(member.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)
            return
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
        elif member.islnk():
            link_parts = _clean_name(member.linkname)
            if not link_parts:
                raise RefusedLayer(f"layer entry {member.name!r} is a hardlink to the layer root")
            try:
                source_dir = tree.open_dir(link_parts[:-1], create=False, entry=member.linkname)
            except FileNotFoundError:
                source_dir = -1
            try:
                if source_dir < 0:
                    raise FileNotFoundError
                st = os.stat(link_parts[-1], dir_fd=source_dir, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise RefusedLayer(
                        f"layer entry {member.name!r} is a hardlink to {member.linkname!r}, "
                        "which is not a regular file of this layer"
                    )
                os.link(link_parts[-1], base, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise RefusedLayer(
                    f"layer entry {member.name!r} is a hardlink to {member.linkname!r}, which this layer lacks",
                    hint="hardlinks may only name files earlier in the same layer",
                ) from None
            finally:
                if source_dir >= 0:
                    os.close(source_dir)
            return  # a hardlink shares the target's owner and mode
        elif member.isfifo():
            os.mkfifo(base, mode, dir_fd=parent)
        elif member.ischr() or member.isblk():
            report.skipped.append(f"{member.name} (device node)")
            return
        else:
            report.skipped.append(f"{member.name} (unsupported tar entry type {member.type!r})")
            return
        _own(base, parent, member, privileged)
        os.utime(base, ns=(int(member.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError as e:
        raise RefusedLayer(f"layer entry {member.name!r}: {e}") from None
    finally:
        os.close(parent)


def _own(name: str, dir_fd: int, member: tarfile.TarInfo, privileged: bool) -> None:
    if privileged:
        os.chown(name, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
