"""Byte sizes as people write and read them: ``max_size = "20G"`` in, ``1.5 GiB`` out.

Powers of 1024 both ways, so a budget of ``20G`` and the ``20.0 GiB`` that ``pbuild system df``
prints are the same number.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int | None:
    """``"20G"``, ``"512M"``, ``"1.5T"``, ``"100K"``, ``"4096"`` or an integer -> bytes (powers of
    1024; a trailing ``B`` or ``iB`` is allowed); None when it is none of those or not positive."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if match is None:
        return None
    number = float(match.group(1)) * _UNITS[match.group(2).upper()]
    return int(number) if number >= 1 else None


def format_size(size: int) -> str:
    """``1.5 GiB``, ``12.0 KiB``, ``812 B``: powers of 1024, one decimal."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError(size)
