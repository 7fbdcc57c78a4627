"""Debian version comparison against cases from Debian Policy §5.6.12 and dpkg's own behaviour."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from pbuild.rules.debian.version import Version, VersionError, compare, satisfies

ORDERED = [
    ("1.0~rc1", "1.0"),
    ("1.0~~", "1.0~"),
    ("1.0", "1.0a"),
    ("1.0a", "1.0+"),
    ("1.0", "1.0-1"),
    ("1.0-1", "1.0-1.1"),
    ("1.0-9", "1.0-10"),
    ("1.9", "1.10"),
    ("2.36-9+deb12u4", "2.36-9+deb12u14"),
    ("3.11.2-6", "3.11.2-6+deb12u8"),
    ("9.9", "1:0.1"),
    ("1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+b1"),
    ("3.0.20-1~deb12u2", "3.0.20-1"),
    ("20230311", "20230311+deb12u1"),
    ("0", "0.0"),
]


@pytest.mark.parametrize(("older", "newer"), ORDERED)
def test_order(older: str, newer: str) -> None:
    assert compare(older, newer) == -1
    assert compare(newer, older) == 1
    assert Version.parse(older) < Version.parse(newer)


@pytest.mark.parametrize("text", ["1.0", "1:2.3-4", "2.36-9+deb12u14", "1.0~rc1-0.1"])
def test_equal_and_roundtrip(text: str) -> None:
    assert compare(text, text) == 0
    assert str(Version.parse(text)) == text


def test_zero_epoch_equals_none() -> None:
    assert compare("0:1.0", "1.0") == 0


@pytest.mark.parametrize(
    ("version", "op", "wanted", "expected"),
    [
        ("2.36-9", ">=", "2.34", True),
        ("2.33", ">=", "2.34", False),
        ("1.0", "<<", "1.0", False),
        ("1.0~", "<<", "1.0", True),
        ("1.0", "<=", "1.0", True),
        ("1.0", "=", "1.0", True),
        ("1.0-1", "=", "1.0", False),
        ("1.1", ">>", "1.0", True),
        ("1.0", ">>", "1.0", False),
    ],
)
def test_satisfies(version: str, op: str, wanted: str, expected: bool) -> None:
    assert satisfies(version, op, wanted) is expected


@pytest.mark.parametrize("bad", ["", "a:1.0", "1.0-", "1.0-$"])
def test_invalid(bad: str) -> None:
    with pytest.raises(VersionError):
        Version.parse(bad)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is the reference implementation")
def test_agrees_with_dpkg() -> None:
    versions = sorted({v for pair in ORDERED for v in pair})
    for a in versions:
        for b in versions:
            ours = compare(a, b)
            theirs = 0
            for op, value in (("lt", -1), ("gt", 1)):
                if subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0:
                    theirs = value
            assert ours == theirs, (a, b)
