"""Debian control-file syntax (deb822 paragraphs) and dependency fields (Policy §5.1, §7.1)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


def parse_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Yield each paragraph of a deb822 document as ``{field: value}``.

    Continuation lines are joined with newlines (the first line of a multi-line field keeps
    its value); ``#`` comment lines are skipped; field names keep their spelling.
    """
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
            continue
        if line.startswith("#"):
            continue
        if line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line[1:]
            continue
        name, _, value = line.partition(":")
        last = name.strip()
        fields[last] = value.strip()
    if fields:
        yield fields


def format_paragraph(fields: dict[str, str]) -> str:
    """Write one paragraph back (fields in the given order), ending with a newline."""
    lines = []
    for name, value in fields.items():
        first, *rest = value.split("\n")
        lines.append(f"{name}: {first}".rstrip() if first else f"{name}:")
        lines.extend(" " + (part if part.strip() else ".") for part in rest)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, order=True)
class Relation:
    """One package relation: ``name [(op version)] [:arch]``, e.g. ``libc6 (>= 2.34)``."""

    name: str
    op: str = ""
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.op} {self.version})" if self.op else self.name


_RELATION = re.compile(
    r"^\s*(?P<name>[a-z0-9][a-z0-9+.\-]*)(?::(?P<arch>[a-z0-9-]+))?\s*"
    r"(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[A-Za-z0-9.+~:-]+)\s*\))?\s*"
    r"(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$"
)


class RelationError(ValueError):
    """A dependency field that does not follow Policy §7.1."""


def parse_relations(field: str) -> list[list[Relation]]:
    """Parse ``a (>= 1) | b, c`` into ``[[a>=1, b], [c]]``: AND of ORs (alternatives)."""
    groups: list[list[Relation]] = []
    for group_text in field.replace("\n", " ").split(","):
        if not group_text.strip():
            continue
        group = []
        for alt in group_text.split("|"):
            match = _RELATION.match(alt)
            if not match:
                raise RelationError(f"cannot parse package relation {alt.strip()!r} in {field.strip()!r}")
            # ":any" / ":native" qualifiers do not change which package satisfies it on one architecture.
            group.append(Relation(match["name"], match["op"] or "", match["version"] or ""))
        groups.append(group)
    return groups
