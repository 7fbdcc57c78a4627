"""Where Debian packages come from: the host's apt sources, or one mirror given by the user.

Nothing here is written into a lock or an output: mirrors are host configuration, read at the
moment something is fetched.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pbuild.engine.errors import PbuildError
from pbuild.rules.debian.control import parse_paragraphs

#: Environment variable naming one mirror for every suite (like ``--mirror``).
MIRROR_ENV = "PBUILD_DEBIAN_MIRROR"


class SourcesError(PbuildError):
    """No usable apt source for a suite."""


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` source: a base URI and the suites and components it serves."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


def _one_line_sources(text: str) -> list[AptSource]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] != "deb":
            continue  # deb-src and anything else
        words = words[1:]
        options: dict[str, str] = {}
        if words and words[0].startswith("["):
            opt_words = []
            while words:
                word = words.pop(0)
                opt_words.append(word)
                if word.endswith("]"):
                    break
            for item in " ".join(opt_words).strip("[] ").split():
                key, _, value = item.partition("=")
                options[key] = value
        if len(words) < 2:
            continue
        uri, suite, components = words[0], words[1], tuple(words[2:])
        out.append(AptSource(uri.rstrip("/"), (suite,), components, options.get("signed-by", "")))
    return out


def _deb822_sources(text: str) -> list[AptSource]:
    out = []
    for para in parse_paragraphs(text):
        fields = {k.lower(): v for k, v in para.items()}
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").strip().lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        signed_by = fields.get("signed-by", "").strip()
        if "\n" in signed_by:  # an inline key block, not a path
            signed_by = ""
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri.rstrip("/"), suites, components, signed_by))
    return out


def read_apt_sources(root: str = "/") -> list[AptSource]:
    """All ``deb`` sources of the host: ``etc/apt/sources.list`` and ``sources.list.d/*.list|*.sources``."""
    sources: list[AptSource] = []
    main = os.path.join(root, "etc/apt/sources.list")
    if os.path.exists(main):
        with open(main, encoding="utf-8") as handle:
            sources += _one_line_sources(handle.read())
    directory = os.path.join(root, "etc/apt/sources.list.d")
    for path in sorted(glob.glob(os.path.join(directory, "*.list")) + glob.glob(os.path.join(directory, "*.sources"))):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        sources += _deb822_sources(text) if path.endswith(".sources") else _one_line_sources(text)
    return sources


def mirror_for_suite(
    suite: str,
    *,
    mirror: str | None = None,
    environ: Mapping[str, str] | None = None,
    sources: list[AptSource] | None = None,
) -> AptSource:
    """The source to fetch ``suite`` from: ``mirror``, else ``$PBUILD_DEBIAN_MIRROR``, else apt's sources."""
    env = os.environ if environ is None else environ
    chosen = mirror or env.get(MIRROR_ENV, "").strip()
    if chosen:
        return AptSource(chosen.rstrip("/"), (suite,), ("main",))
    found = read_apt_sources() if sources is None else sources
    for source in found:
        if suite in source.suites:
            return source
    known = sorted({s for source in found for s in source.suites})
    raise SourcesError(
        f"no apt source serves the Debian suite {suite!r} (the host's sources serve: {', '.join(known) or 'nothing'})",
        hint=f"add it to /etc/apt/sources.list.d, or name a mirror with --mirror URL or {MIRROR_ENV}=URL",
    )
