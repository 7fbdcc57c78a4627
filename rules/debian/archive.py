"""Read a Debian archive over HTTP: InRelease (verified with gpgv when possible) and Packages indexes."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

from pbuild.engine.errors import HashMismatch, PbuildError
from pbuild.rules.debian.control import parse_paragraphs
from pbuild.rules.debian.sources import AptSource

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
TIMEOUT_S = 60


class ArchiveError(PbuildError):
    """The archive could not be read or did not verify."""


def fetch_url(url: str) -> bytes:
    """GET ``url`` (http, https or file) and return the body; network failures become :class:`ArchiveError`."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ArchiveError(f"cannot fetch {url}: {exc}", hint="check the apt mirror, the network, or --mirror") from None


@dataclass(frozen=True)
class Release:
    """A suite's Release data: its fields and the sha256/size of each index file."""

    fields: dict[str, str]
    sha256: dict[str, tuple[str, int]]
    verified: bool


def _strip_clearsign(text: str) -> str:
    """The signed text of a clearsigned message (used only when gpgv cannot check it)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("-----BEGIN PGP SIGNED MESSAGE"):
        return text
    body_start = lines.index("") + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP SIGNATURE"))
    return "\n".join(line[2:] if line.startswith("- ") else line for line in lines[body_start:end]) + "\n"


def _verify(data: bytes, keyring: str) -> str:
    with tempfile.TemporaryDirectory(prefix="pbuild-gpgv-") as tmp:
        signed = os.path.join(tmp, "InRelease")
        out = os.path.join(tmp, "Release")
        with open(signed, "wb") as handle:
            handle.write(data)
        proc = subprocess.run(
            ["gpgv", "--keyring", keyring, "--output", out, signed],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise ArchiveError(
                f"InRelease signature does not verify with {keyring}:\n{proc.stderr.strip()}",
                hint="the mirror may be compromised or stale; check it, or pass a keyring that signs this archive",
            )
        with open(out, encoding="utf-8") as handle:
            return handle.read()


def read_release(source: AptSource, suite: str, *, keyring: str | None = None) -> Release:
    """Fetch ``dists/<suite>/InRelease`` and verify it with gpgv and the archive keyring when both exist."""
    data = fetch_url(f"{source.uri}/dists/{suite}/InRelease")
    ring = keyring or (source.signed_by if source.signed_by and os.path.exists(source.signed_by) else DEBIAN_KEYRING)
    if shutil.which("gpgv") and os.path.exists(ring):
        text, verified = _verify(data, ring), True
    else:
        print(f"pbuild: warning: cannot verify {suite}'s InRelease (gpgv or {ring} missing); "
              "trusting the index hashes only", file=sys.stderr)
        text, verified = _strip_clearsign(data.decode("utf-8")), False
    fields: dict[str, str] = next(parse_paragraphs(text), {})
    hashes: dict[str, tuple[str, int]] = {}
    for line in fields.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            hashes[parts[2]] = (parts[0], int(parts[1]))
    return Release(fields, hashes, verified)


def read_packages(source: AptSource, suite: str, component: str, arch: str, release: Release) -> list[dict[str, str]]:
    """The paragraphs of ``<component>/binary-<arch>/Packages``, checked against the Release hashes."""
    for name, decompress in (("Packages.xz", lzma.decompress), ("Packages", lambda b: b)):
        path = f"{component}/binary-{arch}/{name}"
        if path not in release.sha256:
            continue
        want_hash, want_size = release.sha256[path]
        url = f"{source.uri}/dists/{suite}/{path}"
        data = fetch_url(url)
        got = hashlib.sha256(data).hexdigest()
        if got != want_hash or len(data) != want_size:
            raise HashMismatch(
                f"{url} does not match its InRelease entry: expected sha256 {want_hash} ({want_size} bytes), "
                f"got {got} ({len(data)} bytes)",
                hint="the mirror may be in the middle of an update; retry later or use another mirror",
            )
        return list(parse_paragraphs(decompress(data).decode("utf-8")))
    raise ArchiveError(
        f"suite {suite!r} has no {component}/binary-{arch} Packages index",
        hint="check the suite, component and architecture names",
    )
