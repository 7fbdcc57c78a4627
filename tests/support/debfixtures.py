"""Builders for the Debian tests: real .deb files and a real signed archive served over HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import lzma
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def ar_archive(members: Sequence[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def _tar(entries: Sequence[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for item in entries:
            if isinstance(item, tuple):
                tar.addfile(item[0], io.BytesIO(item[1]))
            else:
                tar.addfile(item)
    return buffer.getvalue()


@dataclass(frozen=True)
class DebSpec:
    """A package to build: files (path -> bytes), symlinks (path -> target), hardlinks (path -> path)."""

    name: str
    version: str = "1.0-1"
    architecture: str = "amd64"
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    files: Mapping[str, bytes] = field(default_factory=dict)
    modes: Mapping[str, int] = field(default_factory=dict)
    symlinks: Mapping[str, str] = field(default_factory=dict)
    hardlinks: Mapping[str, str] = field(default_factory=dict)
    compression: str = "xz"

    def control(self) -> str:
        lines = [f"Package: {self.name}", f"Version: {self.version}", f"Architecture: {self.architecture}",
                 "Maintainer: Test <test@example.invalid>"]
        if self.pre_depends:
            lines.append(f"Pre-Depends: {self.pre_depends}")
        if self.depends:
            lines.append(f"Depends: {self.depends}")
        if self.provides:
            lines.append(f"Provides: {self.provides}")
        lines += ["Description: test package", " A package built by the tests."]
        return "\n".join(lines) + "\n"


def make_deb(spec: DebSpec) -> bytes:
    def info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
        return ti

    dirs: set[str] = set()
    for path in [*spec.files, *spec.symlinks, *spec.hardlinks]:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    data_entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [info("./", tarfile.DIRTYPE, 0o755)]
    data_entries += [info(f"./{d}/", tarfile.DIRTYPE, 0o755) for d in sorted(dirs)]
    for path, content in sorted(spec.files.items()):
        data_entries.append((info(f"./{path}", tarfile.REGTYPE, spec.modes.get(path, 0o644), len(content)), content))
    for path, target in sorted(spec.symlinks.items()):
        data_entries.append(info(f"./{path}", tarfile.SYMTYPE, 0o777, link=target))
    for path, target in sorted(spec.hardlinks.items()):
        data_entries.append(info(f"./{path}", tarfile.LNKTYPE, 0o644, link=f"./{target}"))
    data = _tar(data_entries)
    if spec.compression == "xz":
        member, blob = "data.tar.xz", lzma.compress(data)
    elif spec.compression == "zst":
        import zstandard

        member, blob = "data.tar.zst", zstandard.ZstdCompressor().compress(data)
    else:
        import gzip

        member, blob = "data.tar.gz", gzip.compress(data)
    control_bytes = spec.control().encode()
    md5 = b"".join(hashlib.md5(c).hexdigest().encode() + b"  " + p.encode() + b"\n" for p, c in sorted(spec.files.items()))
    control = _tar([(info("./control", tarfile.REGTYPE, 0o644, len(control_bytes)), control_bytes),
                    (info("./md5sums", tarfile.REGTYPE, 0o644, len(md5)), md5)])
    import gzip

    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar.gz", gzip.compress(control, mtime=0)),
                       (member, blob)])


# ---------------------------------------------------------------------------------------------
# A signed archive


def make_keyring(home: Path) -> Path:
    """A throwaway signing key in ``home`` (a GNUPGHOME); returns the public keyring file."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                    "pbuild test <test@example.invalid>", "ed25519", "sign", "never"],
                   env=env, check=True, capture_output=True)
    keyring = home / "archive.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--export"], env=env, check=True,
                                       capture_output=True).stdout)
    return keyring


def write_archive(root: Path, suite: str, debs: Sequence[DebSpec], *, gnupg_home: Path | None,
                  component: str = "main", arch: str | Sequence[str] = "amd64") -> dict[str, bytes]:
    """Write ``dists/<suite>`` and ``pool/`` for ``debs`` below ``root``; returns name -> .deb bytes
    (``<name>:<architecture>`` for packages of a second architecture).

    ``arch`` is one architecture (its index lists every package) or several: each
    ``binary-<arch>`` index then lists that architecture's packages and the ``all`` ones, as
    Debian's do.
    """
    arches = [arch] if isinstance(arch, str) else list(arch)
    built: dict[str, bytes] = {}
    paragraphs: dict[str, list[str]] = {a: [] for a in arches}
    for spec in debs:
        data = make_deb(spec)
        filename = f"pool/{component}/{spec.name[0]}/{spec.name}/{spec.name}_{spec.version}_{spec.architecture}.deb"
        (root / filename).parent.mkdir(parents=True, exist_ok=True)
        (root / filename).write_bytes(data)
        built[spec.name if spec.name not in built else f"{spec.name}:{spec.architecture}"] = data
        fields = [line for line in spec.control().splitlines()
                  if not line.startswith(("Maintainer:", "Description:", " "))]
        paragraph = ("\n".join(fields) + "\n"
                     + f"Filename: {filename}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
        for a in arches:
            if len(arches) == 1 or spec.architecture in (a, "all"):
                paragraphs[a].append(paragraph)
    hashes = []
    for a in arches:
        packages = "\n".join(paragraphs[a]).encode()
        index_dir = root / "dists" / suite / component / f"binary-{a}"
        index_dir.mkdir(parents=True, exist_ok=True)
        xz = lzma.compress(packages)
        (index_dir / "Packages.xz").write_bytes(xz)
        hashes.append(f" {hashlib.sha256(xz).hexdigest()} {len(xz)} {component}/binary-{a}/Packages.xz\n")
    release = (f"Origin: Test\nSuite: {suite}\nCodename: {suite}\nVersion: 12.9\nArchitectures: {' '.join(arches)}\n"
               f"Components: {component}\nSHA256:\n{''.join(hashes)}")
    release_path = root / "dists" / suite / "Release"
    release_path.write_text(release)
    inrelease = root / "dists" / suite / "InRelease"
    if gnupg_home is None:
        inrelease.write_text(release)
    else:
        subprocess.run(["gpg", "--batch", "--yes", "--clearsign", "--output", str(inrelease), str(release_path)],
                       env={**os.environ, "GNUPGHOME": str(gnupg_home)}, check=True, capture_output=True)
    return built


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on a free local port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
