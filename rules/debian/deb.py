"""Read .deb files in Python (no dpkg) and turn a closure of them into one root filesystem's entries.

A .deb is an ``ar`` archive holding ``debian-binary``, ``control.tar.*`` and ``data.tar.*``
(xz, zstd, gzip or none). The filesystem gets Debian's merged-/usr layout (``/bin``, ``/sbin``,
``/lib``, ``/lib64`` are symlinks into ``/usr``), a dpkg database in the distroless style
(``/var/lib/dpkg/status.d/<package>``) so that scanners see the packages, and the few files a
root filesystem needs that maintainer scripts would otherwise have made.
"""

from __future__ import annotations

import gzip
import io
import lzma
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pbuild.engine.errors import PbuildError
from pbuild.rules.debian.control import format_paragraph, parse_paragraphs
from pbuild.rules.oci.layerwriter import LayerEntry, clean_path

AR_MAGIC = b"!<arch>\n"
#: Top-level directories that merged-/usr moves below /usr, replaced by symlinks.
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: The symlinks every amd64 merged-/usr root has, even if no package ships files there.
ROOT_LINKS = ("bin", "sbin", "lib", "lib64")


class DebError(PbuildError):
    """A .deb that cannot be read."""


def read_ar(data: bytes, *, name: str = "") -> dict[str, bytes]:
    """The members of an ``ar`` archive (common format, as dpkg-deb writes it)."""
    if not data.startswith(AR_MAGIC):
        raise DebError(f"{name or 'file'} is not a Debian package (no ar header)", hint="check the file")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        if header[58:60] != b"`\n":
            raise DebError(f"{name}: damaged ar member header at offset {pos}", hint="re-fetch the package")
        member = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + 60
        members[member] = data[start:start + size]
        pos = start + size + (size & 1)
    return members


def _decompress(member: str, blob: bytes) -> bytes:
    if member.endswith(".xz"):
        return lzma.decompress(blob)
    if member.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    if member.endswith(".gz"):
        return gzip.decompress(blob)
    if member.endswith(".tar"):
        return blob
    raise DebError(f"unsupported compression of {member}", hint="pbuild reads .xz, .zst, .gz and plain tar members")


def _tar_of(members: dict[str, bytes], prefix: str, name: str) -> bytes:
    for member, blob in members.items():
        if member.startswith(prefix + ".tar"):
            return _decompress(member, blob)
    raise DebError(f"{name} has no {prefix}.tar.* member", hint="check the file")


@dataclass(frozen=True)
class DebContents:
    """What pbuild needs of one .deb: its control fields and md5sums, and its filesystem entries."""

    control: dict[str, str]
    md5sums: bytes
    entries: tuple[LayerEntry, ...]


def merged_usr_path(path: str) -> str:
    """``bin/ls`` → ``usr/bin/ls``; other paths unchanged."""
    head, _, rest = path.partition("/")
    if head in MERGED_USR:
        return f"usr/{head}/{rest}" if rest else f"usr/{head}"
    return path


def read_deb(data: bytes, *, name: str = "") -> DebContents:
    """Parse a .deb held in memory."""
    members = read_ar(data, name=name)
    control_text, md5sums = "", b""
    with tarfile.open(fileobj=io.BytesIO(_tar_of(members, "control", name))) as control_tar:
        for info in control_tar.getmembers():
            base = posixpath.basename(info.name)
            handle = control_tar.extractfile(info) if info.isfile() else None
            if handle is not None and base == "control":
                control_text = handle.read().decode("utf-8")
            elif handle is not None and base == "md5sums":
                md5sums = handle.read()
    control = next(parse_paragraphs(control_text), None)
    if not control or "Package" not in control:
        raise DebError(f"{name} has no control file", hint="check the file")
    raw = _tar_of(members, "data", name)
    view = memoryview(raw)
    origin = f"{control['Package']} ({name})"
    entries: list[LayerEntry] = []
    contents: dict[str, bytes] = {}
    hardlinks: list[tuple[str, str, int]] = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as data_tar:
        members_list = data_tar.getmembers()
    for info in members_list:
        path = merged_usr_path(clean_path(info.name, origin=origin))
        if not path:
            continue
        mode = info.mode & 0o7777
        if info.isdir():
            entries.append(LayerEntry(path, "dir", mode, origin=origin))
        elif info.isfile():
            blob = bytes(view[info.offset_data:info.offset_data + info.size])
            contents[path] = blob
            entries.append(LayerEntry(path, "file", mode, data=blob, origin=origin))
        elif info.issym():
            entries.append(LayerEntry(path, "symlink", 0o777, target=info.linkname, origin=origin))
        elif info.islnk():
            hardlinks.append((path, merged_usr_path(clean_path(info.linkname, origin=origin)), mode))
        else:
            raise DebError(f"{name}: {info.name} is a device or fifo", hint="images cannot carry device nodes")
    for path, target, mode in hardlinks:
        # Hard links become copies: layer order is by path, and a link must follow its target.
        if target not in contents:
            raise DebError(f"{name}: hard link {path} points at {target}, which the package lacks", hint="check the file")
        entries.append(LayerEntry(path, "file", mode, data=contents[target], origin=origin))
    return DebContents(control, md5sums, tuple(entries))


# ---------------------------------------------------------------------------------------------
# A root filesystem from a closure


PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
)
GROUP = "root:x:0:\ntty:x:5:\nstaff:x:50:\nnogroup:x:65534:\n"


def _matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    if not patterns:
        return lambda path: False
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitignore", patterns)
    return lambda path: spec.match_file(path)


def os_release(codename: str, version: str) -> str:
    """``/etc/os-release`` for a Debian release (``version`` like ``12.5``; the ID uses its major part)."""
    major = version.split(".", 1)[0] if version else ""
    pretty = f"Debian GNU/Linux {major} ({codename})" if major else f"Debian GNU/Linux ({codename})"
    lines = [
        f'PRETTY_NAME="{pretty}"',
        'NAME="Debian GNU/Linux"',
        *([f'VERSION_ID="{major}"', f'VERSION="{major} ({codename})"'] if major else []),
        f"VERSION_CODENAME={codename}",
        "ID=debian",
        'HOME_URL="https://www.debian.org/"',
        'SUPPORT_URL="https://www.debian.org/support"',
        'BUG_REPORT_URL="https://bugs.debian.org/"',
    ]
    return "\n".join(lines) + "\n"


def _ca_bundle(entries: Sequence[LayerEntry]) -> bytes:
    """``/etc/ssl/certs/ca-certificates.crt`` as ``update-ca-certificates`` would build it at install."""
    certs = sorted(
        (e for e in entries if e.kind == "file" and e.path.startswith("usr/share/ca-certificates/")
         and e.path.endswith(".crt")),
        key=lambda e: e.path,
    )
    out = bytearray()
    for entry in certs:
        data = entry.data or b""
        out += data if data.endswith(b"\n") else data + b"\n"
    return bytes(out)


#: What ``debian:slim`` images leave out: manuals, info pages, translations and documentation,
#: but not the copyright files (licences must ship with the binaries).
SLIM_EXCLUDES = (
    "/usr/share/doc/**",
    "!/usr/share/doc/*/copyright",
    "/usr/share/man/**",
    "/usr/share/info/**",
    "/usr/share/locale/**",
    "/usr/share/lintian/**",
)


def rootfs_entries(debs: Iterable[DebContents], *, codename: str, version: str,
                   exclude: Sequence[str] = ()) -> list[LayerEntry]:
    """The entries of a root filesystem holding every package of ``debs`` (unpacked, configured by hand).

    Directories shipped by several packages are merged (the first mode wins); the same file from
    two packages is reported by :func:`~pbuild.rules.oci.layerwriter.merge_entries`. Paths matching
    ``exclude`` (gitignore-style patterns, ``!`` re-includes) are left out.
    """
    excluded = _matcher(exclude)
    entries: list[LayerEntry] = []
    seen_dirs: set[str] = set()
    names: list[str] = []
    for deb in debs:
        package = deb.control["Package"]
        names.append(package)
        for entry in deb.entries:
            if excluded(entry.path):
                continue
            if entry.kind == "dir":
                if entry.path in seen_dirs:
                    continue
                seen_dirs.add(entry.path)
            entries.append(entry)
        status = dict(deb.control)
        status.setdefault("Status", "install ok installed")
        entries.append(LayerEntry(f"var/lib/dpkg/status.d/{package}", "file", 0o644,
                                  data=format_paragraph(status).encode("utf-8"), origin="dpkg database"))
        if deb.md5sums:
            entries.append(LayerEntry(f"var/lib/dpkg/status.d/{package}.md5sums", "file", 0o644,
                                      data=deb.md5sums, origin="dpkg database"))
    shipped = {e.path for e in entries}
    extra: list[LayerEntry] = []
    for link in ROOT_LINKS:
        extra.append(LayerEntry(link, "symlink", 0o777, target=f"usr/{link}", origin="merged /usr"))
        if f"usr/{link}" not in seen_dirs:
            extra.append(LayerEntry(f"usr/{link}", "dir", 0o755, origin="merged /usr"))
    base = {
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/os-release": os_release(codename, version),
    }
    for path, text in base.items():
        if path not in shipped:
            extra.append(LayerEntry(path, "file", 0o644, data=text.encode(), origin="base files"))
    for path, mode in (("tmp", 0o1777), ("root", 0o700), ("etc", 0o755), ("var/lib/dpkg/status.d", 0o755)):
        if path not in seen_dirs:
            extra.append(LayerEntry(path, "dir", mode, origin="base files"))
    if "ca-certificates" in names and "etc/ssl/certs/ca-certificates.crt" not in shipped:
        extra.append(LayerEntry("etc/ssl/certs/ca-certificates.crt", "file", 0o644, data=_ca_bundle(entries),
                                origin="ca-certificates (update-ca-certificates)"))
    return entries + extra
