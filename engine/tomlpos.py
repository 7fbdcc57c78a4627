"""Line numbers for TOML tables and keys.

tomllib returns plain dicts without positions, and no well-kept TOML library for Python reports
positions of values cheaply, so this scans the text for table headers and ``key =`` lines. It only
has to be right for valid TOML (tomllib has already accepted the file), which keeps it small.
"""

from __future__ import annotations

import re
import tomllib

from pbuild.engine.errors import Location

_HEADER = re.compile(r'^\s*\[\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_\-.]+)\s*\]\s*(?:#.*)?$')
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_\-]+)\s*=')
_ERROR_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def toml_error_location(path: str, exc: tomllib.TOMLDecodeError) -> Location:
    match = _ERROR_POS.search(str(exc))
    if match:
        return Location(path, int(match.group(1)), int(match.group(2)))
    return Location(path)


def table_positions(text: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Map each top-level table name to its header line, and (table, key) to the key's line."""
    tables: dict[str, int] = {}
    keys: dict[tuple[str, str], int] = {}
    current = ""  # keys before the first header belong to the top-level table ""
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _HEADER.match(line)
        if header:
            name = header.group(1)
            current = name[1:-1] if name.startswith('"') else name
            tables.setdefault(current, number)
            continue
        key = _KEY.match(line)
        if key:
            name = key.group(1)
            name = name[1:-1] if name.startswith('"') else name
            keys.setdefault((current, name), number)
        for quote in ('"""', "'''"):
            if line.count(quote) % 2 == 1:
                in_multiline = quote
                break
    return tables, keys
