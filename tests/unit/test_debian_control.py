"""deb822 paragraphs and package relation fields."""

from __future__ import annotations

import pytest
from pbuild.rules.debian.control import (
    Relation,
    RelationError,
    format_paragraph,
    parse_paragraphs,
    parse_relations,
)


def test_paragraphs_with_continuations_and_comments() -> None:
    text = "Package: a\nDescription: short\n long line\n .\n more\n\n# comment\nPackage: b\nVersion: 1\n"
    paras = list(parse_paragraphs(text))
    assert [p["Package"] for p in paras] == ["a", "b"]
    assert paras[0]["Description"] == "short\nlong line\n.\nmore"
    assert paras[1]["Version"] == "1"


def test_format_roundtrip() -> None:
    fields = {"Package": "a", "Description": "short\nlong\n\nend"}
    again = next(parse_paragraphs(format_paragraph(fields)))
    assert again["Package"] == "a"
    assert again["Description"] == "short\nlong\n.\nend"


def test_relations() -> None:
    groups = parse_relations("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any, foo [amd64] <!nocheck>")
    assert groups == [
        [Relation("libc6", ">=", "2.34")],
        [Relation("debconf", ">=", "0.5"), Relation("debconf-2.0")],
        [Relation("python3")],
        [Relation("foo")],
    ]
    assert str(groups[0][0]) == "libc6 (>= 2.34)"


def test_bad_relation() -> None:
    with pytest.raises(RelationError, match="cannot parse"):
        parse_relations("libc6 (>= )")
