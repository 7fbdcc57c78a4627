"""Compose's variable interpolation in a Compose file's values: ``$VAR``, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``, ``${VAR:+other}``,
``${VAR+other}``, and ``$$`` for a literal ``$``.

The variables are the caller's environment over the project folder's ``.env`` file, as Compose
does. Only Compose files are interpolated: a ``stack`` target in BUILD.toml is build input and must
not depend on the environment of whoever runs ``pbuild up``.

Written by hand: ``string.Template`` knows neither the ``:-``/``:?``/``:+`` forms nor nested
defaults, and a shell would run commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_BRACED = re.compile(rf"(?P<name>{_NAME})(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL)
_PLAIN = re.compile(_NAME)


class InterpolationError(ValueError):
    """A ``${...}`` that cannot be read, or a ``${VAR?message}`` whose variable is unset."""


def interpolate(text: str, variables: Mapping[str, str], on_unset: Callable[[str], object]) -> str:
    """``text`` with its variables replaced; ``on_unset(name)`` is told of each variable that is
    not set and has no default (it becomes empty, as in Compose)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2 : end], variables, on_unset))
            i = end + 1
        elif plain := _PLAIN.match(text, i + 1):
            out.append(_lookup(plain.group(), variables, on_unset))
            i = plain.end()
        else:
            raise InterpolationError(f"a '$' not followed by a variable in {text!r}; write $$ for a '$'")
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    """The index of the ``}`` that closes the ``${`` before ``start`` (defaults may nest)."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"'${{' without its '}}' in {text!r}")


def _braced(inner: str, variables: Mapping[str, str], on_unset: Callable[[str], object]) -> str:
    match = _BRACED.fullmatch(inner)
    if match is None:
        raise InterpolationError(f"'${{{inner}}}' is not a variable: use ${{NAME}} or ${{NAME:-default}}")
    name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
    value = variables.get(name)
    empty = not value  # the ':' forms treat an empty value as unset
    if op in (":-", "-"):
        if value is None or (op == ":-" and empty):
            return interpolate(arg, variables, on_unset)
        return value
    if op in (":?", "?"):
        if value is None or (op == ":?" and empty):
            raise InterpolationError(f"{name} is required: {interpolate(arg, variables, on_unset) or 'not set'}")
        return value
    if op in (":+", "+"):
        set_here = value is not None and not (op == ":+" and empty)
        return interpolate(arg, variables, on_unset) if set_here else ""
    return _lookup(name, variables, on_unset)


def _lookup(name: str, variables: Mapping[str, str], on_unset: Callable[[str], object]) -> str:
    if name not in variables:
        on_unset(name)
        return ""
    return variables[name]
