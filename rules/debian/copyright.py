"""The licence of a Debian package as an SPDX expression, from its machine-readable copyright file.

Debian ships ``/usr/share/doc/<package>/copyright``; when its first paragraph has a ``Format:``
line naming the copyright-format specification (DEP-5), every ``Files:`` paragraph carries a
``License:`` field whose first line is a short name expression (``GPL-2+ or Artistic``). The
package's licence is the conjunction of those: each short name mapped to its SPDX identifier,
``or``/``and`` kept, the parts deduplicated, sorted and joined with ``AND``. A copyright file in
free text says nothing a program can rely on: its licence is None (the SBOM's NOASSERTION).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pbuild.rules.debian.control import parse_paragraphs

#: The copyright-format URLs' tell-tale parts (http and https, the 1.0 spec and the DEP-5 drafts).
_FORMAT_MARKERS = ("/copyright-format/", "dep.debian.net/deps/dep5", "dep-team.pages.debian.net/deps/dep5")

#: Debian short names whose SPDX identifier is not the same text in another case. GNU licences
#: follow one pattern (``GPL-2`` / ``GPL-2+`` / ``GPL-2.0+``) and are handled by :func:`_gnu`.
_SHORT_NAMES = {
    "expat": "MIT",
    "psf-2": "PSF-2.0",
    "artistic": "Artistic-1.0",
    "artistic-1": "Artistic-1.0",
    "artistic-2": "Artistic-2.0",
    "apache-2": "Apache-2.0",
    "mpl-1.1": "MPL-1.1",
    "mpl-2": "MPL-2.0",
    "zlib": "Zlib",
    "bsd-2": "BSD-2-Clause",
    "bsd-3": "BSD-3-Clause",
    "bsd-4": "BSD-4-Clause",
    "cc0": "CC0-1.0",
    "public-domain": "LicenseRef-public-domain",
    "publicdomain": "LicenseRef-public-domain",
    "permissive": "LicenseRef-permissive",
}
#: SPDX identifiers known without packaging.licenses (see :func:`_canonical`): what the
#: mapping above produces and the licences Debian's base packages commonly use.
_FALLBACK_IDS = {i.lower(): i for i in (*_SHORT_NAMES.values(), "Apache-2.0", "ISC", "MIT", "BSD-2-Clause",
                                         "BSD-3-Clause", "X11", "OpenSSL", "curl", "BSL-1.0", "Unlicense")}
_GNU_ID = re.compile(r"^(A?GPL|LGPL|GFDL)-\d\.\d-(only|or-later)$")
_GNU = re.compile(r"^(a?gpl|lgpl|gfdl)-?(\d+(?:\.\d+)?)(\+)?$", re.IGNORECASE)
_REF_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


def is_machine_readable(text: str) -> bool:
    """Whether ``text`` is a DEP-5 copyright file: its first line is ``Format:`` with the spec's URL."""
    first = text.lstrip("\ufeff").split("\n", 1)[0]
    key, _, value = first.partition(":")
    return key.strip().lower() == "format" and any(m in value for m in _FORMAT_MARKERS)


def license_expression(text: str) -> str | None:
    """The SPDX expression of a copyright file's ``License:`` short names, or None if it is not DEP-5."""
    if not is_machine_readable(text):
        return None
    parts: set[str] = set()
    paragraphs = list(parse_paragraphs(text))
    for index, fields in enumerate(paragraphs):
        # Files paragraphs name what applies; the header's License (if any) covers the whole work.
        if "License" not in fields or not ("Files" in fields or index == 0):
            continue
        short = fields["License"].split("\n", 1)[0].strip()
        if short:
            parts.add(short_name_expression(short))
    if not parts:
        return None
    return " AND ".join(sorted(_flatten_and(parts)))


def _flatten_and(parts: Iterable[str]) -> set[str]:
    """Top-level ``A AND B`` parts split, so that the conjunction deduplicates across paragraphs."""
    out: set[str] = set()
    for part in parts:
        out.update(_split_top(part, "AND") if not part.startswith("(") else [part])
    return out


def _split_top(expression: str, operator: str) -> list[str]:
    """``expression`` split at ``operator`` outside parentheses."""
    out: list[str] = []
    current: list[str] = []
    depth = 0
    for token in expression.split(" "):
        depth += token.count("(") - token.count(")")
        if token == operator and depth == 0:
            out.append(" ".join(current))
            current = []
        else:
            current.append(token)
    out.append(" ".join(current))
    return out


def short_name_expression(short: str) -> str:
    """One ``License:`` first line (``GPL-2+ or Artistic``, ``LGPL-2.1+ and BSD-3-clause``) as SPDX.

    In the copyright format ``and`` binds tighter than ``or``, and a comma separates alternatives
    the way ``or`` does; ``X with Y exception`` has no SPDX form unless Y is a listed exception, so
    it becomes one ``LicenseRef``.
    """
    text = re.sub(r"\s+", " ", short.strip())
    text = re.sub(r"\s*,\s*(?=(or|and)\b)", " ", text, flags=re.IGNORECASE)
    alternatives = []
    for alternative in re.split(r"\s+or\s+|\s*,\s*", text, flags=re.IGNORECASE):
        terms = sorted({spdx_id(term) for term in re.split(r"\s+and\s+", alternative, flags=re.IGNORECASE) if term})
        if terms:
            alternatives.append(" AND ".join(terms))
    alternatives = sorted(set(alternatives))
    if len(alternatives) == 1:
        return alternatives[0]
    return "(" + " OR ".join(f"({a})" if " AND " in a else a for a in alternatives) + ")"


def spdx_id(name: str) -> str:
    """The SPDX identifier of one Debian licence short name; ``LicenseRef-<name>`` if it has none."""
    name = name.strip()
    key = name.lower()
    gnu = _GNU.match(name)
    if gnu:
        family, version, later = gnu.group(1).upper(), gnu.group(2), gnu.group(3)
        version = version if "." in version else f"{version}.0"
        candidate = f"{family}-{version}-{'or-later' if later else 'only'}"
    else:
        candidate = _SHORT_NAMES.get(key) or _SHORT_NAMES.get(re.sub(r"-clause$", "", key)) or name
    if candidate.startswith("LicenseRef-"):
        return candidate
    known = _canonical(candidate)
    return known if known is not None else "LicenseRef-" + _REF_UNSAFE.sub("-", name)


def _canonical(identifier: str) -> str | None:
    """``identifier`` in the SPDX list's spelling, or None if the list does not have it.

    ``packaging.licenses`` carries the SPDX licence list (packaging >= 24.2). pbuild accepts an
    older packaging (>= 23), which has no such list and no other library does the job, so then
    only the identifiers of :data:`_FALLBACK_IDS` are known and other names become LicenseRefs.
    """
    if not re.fullmatch(r"[A-Za-z0-9.+-]+", identifier):
        return None
    try:
        from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
    except ImportError:
        return _FALLBACK_IDS.get(identifier.lower()) or (identifier if _GNU_ID.match(identifier) else None)
    try:
        canonical = str(canonicalize_license_expression(identifier))
    except InvalidLicenseExpression:
        return None
    return None if canonical.startswith("LicenseRef-") else canonical
