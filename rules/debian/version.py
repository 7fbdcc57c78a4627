"""Debian version comparison, written from the algorithm in Debian Policy §5.6.12.

A version is ``[epoch:]upstream[-revision]``. Epochs compare as integers; upstream versions and
revisions compare by alternating runs: a run of non-digits compared character by character
(``~`` before everything, even the end; letters before non-letters), then a run of digits
compared as an integer.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_UPSTREAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~:-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9.+~]+$")


class VersionError(ValueError):
    """Not a Debian version string."""


@dataclass(frozen=True)
class Version:
    """A parsed Debian version; instances order as Debian orders them."""

    epoch: int
    upstream: str
    revision: str

    @classmethod
    def parse(cls, text: str) -> Version:
        text = text.strip()
        head, colon, rest = text.partition(":")
        if colon:
            if not head.isdigit():
                raise VersionError(f"{text!r} is not a Debian version (bad epoch {head!r})")
            epoch, text_rest = int(head), rest
        else:
            epoch, text_rest = 0, text
        upstream, dash, revision = text_rest.rpartition("-")
        if not dash:
            upstream, revision = text_rest, ""
        elif not revision:
            raise VersionError(f"{text!r} is not a Debian version (empty revision after '-')")
        if not _UPSTREAM.match(upstream) or (revision and not _REVISION.match(revision)):
            raise VersionError(f"{text!r} is not a Debian version")
        return cls(epoch, upstream, revision)

    def __str__(self) -> str:
        text = f"{self.epoch}:{self.upstream}" if self.epoch else self.upstream
        return f"{text}-{self.revision}" if self.revision else text

    def _cmp(self, other: Version) -> int:
        if self.epoch != other.epoch:
            return -1 if self.epoch < other.epoch else 1
        return compare_part(self.upstream, other.upstream) or compare_part(self.revision, other.revision)

    def __lt__(self, other: Version) -> bool:
        return self._cmp(other) < 0

    def __le__(self, other: Version) -> bool:
        return self._cmp(other) <= 0

    def __gt__(self, other: Version) -> bool:
        return self._cmp(other) > 0

    def __ge__(self, other: Version) -> bool:
        return self._cmp(other) >= 0


def _order(char: str) -> int:
    """Sort weight of one character in a non-digit run (Policy: ~ < end < letters < others)."""
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_lexical(a: str, b: str) -> int:
    for i in range(max(len(a), len(b))):
        # The end of a string weighs 0: after ~, before every letter and symbol.
        wa = _order(a[i]) if i < len(a) else 0
        wb = _order(b[i]) if i < len(b) else 0
        if wa != wb:
            return -1 if wa < wb else 1
    return 0


_RUNS = re.compile(r"(\D*)(\d*)")


def compare_part(a: str, b: str) -> int:
    """Compare two upstream versions or two revisions: -1, 0 or 1."""
    runs_a = [m for m in _RUNS.findall(a) if m != ("", "")]
    runs_b = [m for m in _RUNS.findall(b) if m != ("", "")]
    for i in range(max(len(runs_a), len(runs_b))):
        text_a, num_a = runs_a[i] if i < len(runs_a) else ("", "")
        text_b, num_b = runs_b[i] if i < len(runs_b) else ("", "")
        result = _compare_lexical(text_a, text_b)
        if result:
            return result
        int_a, int_b = int(num_a or 0), int(num_b or 0)
        if int_a != int_b:
            return -1 if int_a < int_b else 1
    return 0


def compare(a: str, b: str) -> int:
    """Compare two Debian version strings: -1 if ``a`` is older, 0 if equal, 1 if newer."""
    return Version.parse(a)._cmp(Version.parse(b))


@functools.lru_cache(maxsize=65536)
def _parsed(text: str) -> Version:
    return Version.parse(text)


def satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether ``version`` satisfies the relation ``op wanted`` (``<<``, ``<=``, ``=``, ``>=``, ``>>``)."""
    result = _parsed(version)._cmp(_parsed(wanted))
    if op == "<<":
        return result < 0
    if op in ("<=", "<"):  # "<" and ">" are obsolete spellings of "<=" and ">="
        return result <= 0
    if op == "=":
        return result == 0
    if op in (">=", ">"):
        return result >= 0
    if op == ">>":
        return result > 0
    raise VersionError(f"unknown version relation {op!r}")
