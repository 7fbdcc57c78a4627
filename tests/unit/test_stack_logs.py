"""The services' log files: lines with timestamps, read back incrementally, interleaved by time."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from pbuild.tools.stack.logs import MAX_LINE, LineWriter, LogLine, Tail, merged, render, show


def writer(path: Path, raw: Path, stream: str, clock: itertools.count) -> LineWriter:  # type: ignore[type-arg]
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    raw_fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    return LineWriter(log_fd, raw_fd, stream, clock=lambda: float(next(clock)))


def test_lines_are_cut_stamped_and_copied_raw(tmp_path: Path) -> None:
    w = writer(tmp_path / "a.log", tmp_path / "raw", "o", itertools.count(100))
    w.feed(b"one\ntw")
    w.feed(b"o\nthree")  # no newline yet: held back
    assert (tmp_path / "a.log").read_bytes() == b"100.000000 o one\n101.000000 o two\n"
    w.close()  # the pipe ended: the last line is still a line
    assert (tmp_path / "a.log").read_bytes().endswith(b"102.000000 o three\n")
    assert (tmp_path / "raw").read_bytes() == b"one\ntwo\nthree"


def test_an_overlong_line_is_cut(tmp_path: Path) -> None:
    w = writer(tmp_path / "a.log", tmp_path / "raw", "e", itertools.count(1))
    w.feed(b"x" * (MAX_LINE + 10) + b"\n")
    lines = (tmp_path / "a.log").read_bytes().splitlines()
    assert [len(line) for line in lines] == [len(b"1.000000 e ") + MAX_LINE, len(b"1.000000 e ") + 10]  # one read, one time


def test_tail_reads_only_complete_new_lines_and_skips_damaged_ones(tmp_path: Path) -> None:
    path = tmp_path / "web.log"
    path.write_bytes(b"1.5 o first\ngarbage\n2.5 e sec")
    tail = Tail(str(path), "web")
    assert tail.read() == [LogLine(1.5, "web", "o", b"first")]
    with open(path, "ab") as f:
        f.write(b"ond\n")
    assert tail.read() == [LogLine(2.5, "web", "e", b"second")]
    assert tail.read() == []
    assert Tail(str(tmp_path / "missing.log"), "x").read() == []


def test_services_interleave_by_time_with_compose_prefixes(tmp_path: Path) -> None:
    (tmp_path / "api.log").write_bytes(b"1.0 o a1\n3.0 o a2\n")
    (tmp_path / "db.log").write_bytes(b"2.0 e d1\n4.0 o d2\n")
    a = Tail(str(tmp_path / "api.log"), "api").read()
    d = Tail(str(tmp_path / "db.log"), "db").read()
    assert [line.text for line in merged([a, d])] == [b"a1", b"d1", b"a2", b"d2"]
    assert render(d[0], 5) == b"db    | d1\n"
    out: list[bytes] = []
    show(str(tmp_path), ["api", "db"], follow=False, keep_following=lambda: False, write=out.append,
         offsets={"api": len(b"1.0 o a1\n")})  # fmt: skip
    assert b"".join(out) == b"db  | d1\napi | a2\ndb  | d2\n"
