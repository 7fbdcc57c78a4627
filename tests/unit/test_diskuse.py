"""Disk accounting: sizes parsed and shown, hard links counted once and freed only with the last one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pbuild.engine.diskuse import Tally
from pbuild.lib.sizes import format_size, parse_size


@pytest.mark.parametrize(("value", "expected"), [
    ("20G", 20 << 30), ("512M", 512 << 20), ("100K", 100 << 10), ("1T", 1 << 40), ("1.5G", 3 << 29),
    ("20g", 20 << 30), ("20GB", 20 << 30), ("20GiB", 20 << 30), (" 7 ", 7), ("4096", 4096), (4096, 4096),
])
def test_sizes_parse_in_powers_of_1024(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["20X", "", "G", "-1G", "0", 0, -5, True, 1.5, "1e9", "20 G B", "0.1"])
def test_what_is_not_a_size(value: object) -> None:
    assert parse_size(value) is None


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 5 << 20, 20 << 30)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "20.0 GiB"]


def test_hard_links_count_once_and_free_only_with_the_last_link(tmp_path: Path) -> None:
    cas, out = tmp_path / "cas", tmp_path / "out"
    cas.mkdir()
    out.mkdir()
    (cas / "shared").write_bytes(b"x" * 1000)
    os.link(cas / "shared", out / "shared")  # pbuild-out's link, not shown to the tally
    os.link(cas / "shared", cas / "shared-again")
    (cas / "alone").write_bytes(b"y" * 10)
    tally = Tally()
    tally.add_tree(str(cas), "cache")
    tally.add_tree(str(cas), "cache")  # a path shown twice counts once
    assert tally.size() == 1010  # the 1000 bytes once, though three names reach them
    assert tally.freed(lambda g: g == "cache") == 10  # out/shared keeps the 1000 bytes alive
    tally.add_tree(str(out), "outputs")
    assert tally.size() == 1010
    assert tally.size(lambda g: g == "outputs") == 1000
    assert tally.size(lambda g: g == "cache", lambda g: g == "outputs") == 10
    assert tally.freed(lambda g: g in ("cache", "outputs")) == 1010
