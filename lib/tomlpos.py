"""Reading TOML safely, and line numbers for TOML tables and keys.

tomllib returns plain dicts without positions, and no well-kept TOML library for Python reports
positions of values cheaply, so this scans the text for table headers and ``key =`` lines. It only
has to be right for valid TOML (tomllib has already accepted the file), which keeps it small.

tomllib parses nested arrays and inline tables by recursion, so a file nested a few hundred levels
deep overflows Python's stack; :func:`load_toml` bounds the nesting instead, with a position.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from pbuild.lib.errors import Location

MAX_NESTING = 100  # levels of tables and arrays; real files use a handful

_HEADER = re.compile(r'^\s*\[\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_\-.]+)\s*\]\s*(?:#.*)?$')
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_\-]+)\s*=')
_ERROR_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def toml_error_location(path: str, exc: tomllib.TOMLDecodeError) -> Location:
    match = _ERROR_POS.search(str(exc))
    if match:
        return Location(path, int(match.group(1)), int(match.group(2)))
    return Location(path)


def toml_error_message(exc: tomllib.TOMLDecodeError, syntax_hint: str) -> tuple[str, str]:
    """The message (without tomllib's position, which goes into the Location) and the hint."""
    what = str(exc).split(" (at")[0]
    if isinstance(exc, TomlInputError):  # not UTF-8, nested too deep, or left open (its own hint)
        return what, exc.hint
    return f"invalid TOML: {what}", syntax_hint


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


class TomlInputError(tomllib.TOMLDecodeError):
    """A file tomllib would choke on (not UTF-8, nested deeper than :data:`MAX_NESTING`), reported
    as a TOML error with tomllib's ``(at line L, column C)`` ending, so every caller handles it."""

    def __init__(self, message: str, hint: str) -> None:
        ValueError.__init__(self, message)  # not TOMLDecodeError's (msg, doc, pos) of newer Pythons
        self.hint = hint


def load_toml(source: str | bytes) -> dict[str, Any]:
    """``tomllib.loads`` that raises :class:`TomlInputError` (a ``TOMLDecodeError``) for bytes that
    are not UTF-8 and for values nested deeper than MAX_NESTING, instead of a UnicodeDecodeError or
    a stack overflow (or data that would overflow the stack of whoever walks it later)."""
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = source.count(b"\n", 0, exc.start) + 1
            raise TomlInputError(f"not UTF-8 text (at line {at}, column 1)", "save the file as UTF-8") from None
    else:
        text = source
    try:
        data = tomllib.loads(text)
    except RecursionError:
        data = None
    except tomllib.TOMLDecodeError as exc:
        opened = _unclosed_opening(text, str(exc))
        if opened is None:
            raise
        raise TomlInputError(opened, "close it where it should end (check the lines after it)") from None
    path = _too_deep_path(data) if data is not None else []
    if data is not None and path is None:
        return data
    line, column = _deep_bracket(text)
    if line is None and path:  # nested by dotted keys or table headers, not by brackets
        tables, keys = table_positions(text)
        headers = [name for name in tables if name.startswith(path[0] + ".")]
        deepest = max(headers, key=lambda name: name.count("."), default=None)
        line = (keys.get((path[0], path[1])) if len(path) > 1 else None) \
            or (tables[deepest] if deepest else None) or tables.get(path[0])
    raise TomlInputError(_too_deep(line, column), f"nest tables and arrays at most {MAX_NESTING} levels deep")


def _too_deep(line: int | None, column: int | None) -> str:
    where = f" (at line {line}, column {column or 1})" if line else ""
    return f"values nested more than {MAX_NESTING} levels deep{where}"


def _too_deep_path(data: dict[str, Any]) -> list[str] | None:
    """The keys leading to a value nested deeper than MAX_NESTING, or None. A loop, not recursion."""
    stack: list[tuple[Any, list[str]]] = [(data, [])]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_NESTING:
            return path
        if isinstance(value, dict):
            stack.extend((v, [*path, str(k)]) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, [*path, str(i)]) for i, v in enumerate(value))
    return None


# Strings and comments (whose brackets do not count), then the brackets themselves.
_BRACKET_TOKENS = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}]'
)


def _deep_bracket(text: str) -> tuple[int | None, int | None]:
    """Line and column of the first ``[`` or ``{`` nested deeper than MAX_NESTING, if any."""
    depth = 0
    for match in _BRACKET_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_NESTING:
                start = match.start()
                line_start = text.rfind("\n", 0, start) + 1
                return text.count("\n", 0, start) + 1, start - line_start + 1
        elif token in "]}":
            depth = max(0, depth - 1)
    return None, None


# What a value may hold whose brackets do not count, complete or cut off by the end of a line
# (one-line strings) or of the file (multi-line strings); comments; brackets; newlines.
_OPENING_TOKENS = re.compile(
    r'(?P<ml>"""(?:[^\\]|\\.)*?(?:"""|\Z)|\'\'\'[\s\S]*?(?:\'\'\'|\Z))'
    r'|(?P<str>"(?:[^"\\\n]|\\.)*"?|\'[^\'\n]*\'?)'
    r"|(?P<comment>#[^\n]*)|[\[\]{}]|(?P<nl>\n)|(?P<eq>=)"
)
_KIND = {"[": "array", "{": "inline table"}


def _unclosed_opening(text: str, parser_message: str) -> str | None:
    """For a syntax error caused by something left open (an array or inline table across lines,
    a string, a table header), a message placing it where it opens, the parser's own words beside;
    None when the parser's position is the better one.

    tomllib notices an unclosed ``[`` only where the next value fails to parse, often lines later;
    a user wants the line where the array starts.
    """
    match = _ERROR_POS.search(parser_message)
    if match:
        line_no, column = int(match.group(1)), int(match.group(2))
        offsets = [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]
        stop = offsets[line_no - 1] + column - 1 if line_no <= len(offsets) else len(text)
        parser_at = f"line {line_no}, column {column}"
    elif "end of document" in parser_message:
        stop, parser_at = len(text), "the end of the file"
    else:
        return None
    what = parser_message.split(" (at")[0]

    def at(offset: int) -> tuple[int, int]:
        line_start = text.rfind("\n", 0, offset) + 1
        return text.count("\n", 0, offset) + 1, offset - line_start + 1

    def report(kind: str, offset: int) -> str:
        line, col = at(offset)
        return (f"invalid TOML: {kind} opened here is not closed (the parser stopped at {parser_at}: {what}) "
                f"(at line {line}, column {col})")

    stack: list[tuple[str, int]] = []  # open brackets: (kind, offset)
    header: int | None = None  # offset of an open table header's "["
    in_value = False  # after "=" on a key's line, or inside brackets
    for token in _OPENING_TOKENS.finditer(text, 0, stop):
        value, start = token.group(), token.start()
        if token.group("comment"):
            continue
        if token.group("nl"):
            if header is not None:
                return report("table header", header)
            in_value = bool(stack)
        elif token.group("ml"):
            if len(value) < 6 or not value.endswith(value[:3]):
                return report("multi-line string", start)
        elif token.group("str"):
            if len(value) < 2 or value[-1] != value[0]:
                return report("string", start)
        elif token.group("eq"):
            in_value = True
        elif value in "[{":
            first_on_line = not text[text.rfind("\n", 0, start) + 1 : start].strip()
            if value == "[" and not stack and not in_value and first_on_line:
                header = start  # "[table]" or "[[array.of.tables]]"
            elif header is None:
                stack.append((_KIND[value], start))
        elif header is not None:  # a header ends at the last "]" of its line
            line_end = text.find("\n", start)
            if "]" not in text[start + 1 : line_end if line_end >= 0 else None]:
                header = None
        elif stack:
            stack.pop()
    if header is not None:
        return report("table header", header)
    if stack:
        kind, start = stack[-1]
        # An array may span lines and hold a bad value: the opening is the place to show only
        # when the parser missed its end (past its line, or an inline table, which may not span
        # lines, at the end of its line) or the file ended inside it.
        missed_end = what.startswith("Unclosed") and (at(start)[0] != at(stop)[0] or text[stop] == "\n")
        if missed_end or stop >= len(text):
            return report(kind, start)
    return None
