"""The services' output: written by the supervisor, read by ``pbuild logs TARGET``.

The supervisor owns each container's stdout and stderr pipes. What arrives is written twice:
as is to the container's own ``log`` (so ``pbuild logs web-backend-1`` works as for any
detached container), and line by line to ``logs/SERVICE.log`` in the stack's folder, each line
``SECONDS.MICROS STREAM TEXT`` (``STREAM`` is ``o`` or ``e``), so that ``logs`` can interleave
the services by time. A line longer than :data:`MAX_LINE` is cut into pieces, and a last line
without a newline is written when its pipe closes.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

MAX_LINE = 16384


class LogLine(NamedTuple):
    when: float
    service: str
    stream: str  # "o" or "e"
    text: bytes  # without its newline


class LineWriter:
    """Cuts one pipe's bytes into timestamped lines for ``log_fd``; copies them raw to ``raw_fd``."""

    def __init__(self, log_fd: int, raw_fd: int, stream: str, clock: Callable[[], float] = time.time) -> None:
        self.log_fd = log_fd
        self.raw_fd = raw_fd
        self.stream = stream
        self.clock = clock
        self.pending = b""

    def feed(self, data: bytes) -> None:
        if self.raw_fd >= 0:
            _write_all(self.raw_fd, data)
        self.pending += data
        lines = []
        while True:
            cut = self.pending.find(b"\n", 0, MAX_LINE + 1)
            if cut >= 0:
                line, self.pending = self.pending[:cut], self.pending[cut + 1 :]
            elif len(self.pending) >= MAX_LINE:
                line, self.pending = self.pending[:MAX_LINE], self.pending[MAX_LINE:]
            else:
                break
            lines.append(line)
        self._write(lines)

    def close(self) -> None:
        """The pipe ended: a last unterminated line is still a line."""
        if self.pending:
            self._write([self.pending])
            self.pending = b""

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        stamp = f"{self.clock():.6f} {self.stream} ".encode()
        _write_all(self.log_fd, b"".join(stamp + line + b"\n" for line in lines))


def _write_all(fd: int, data: bytes) -> None:
    from pbuild.tools.launcher.terminal import write_all  # the supervisor's: `logs` need not load it

    with contextlib.suppress(OSError):  # a full disk loses log lines, never the service
        write_all(fd, data)


def parse_line(service: str, raw: bytes) -> LogLine | None:
    """One line of a ``SERVICE.log`` (without its newline); None for a damaged one."""
    stamp, _, rest = raw.partition(b" ")
    stream, _, text = rest.partition(b" ")
    try:
        when = float(stamp)
    except ValueError:
        return None
    return LogLine(when, service, stream.decode(errors="replace"), text)


class Tail:
    """Reads the complete lines appended to one service's log since the last call."""

    def __init__(self, path: str, service: str, offset: int = 0) -> None:
        self.path = path
        self.service = service
        self.offset = offset
        self.pending = b""

    def read(self) -> list[LogLine]:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:  # truncated: the service was recreated
                    self.offset, self.pending = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.pending + data
        complete, newline, rest = data.rpartition(b"\n")
        if not newline:
            self.pending = data
            return []
        self.pending = rest
        lines = (parse_line(self.service, raw) for raw in complete.split(b"\n"))
        return [line for line in lines if line is not None]


def merged(batches: Iterable[list[LogLine]]) -> Iterator[LogLine]:
    """Lines of several services in time order (each service's lines are in order already)."""
    return heapq.merge(*batches, key=lambda line: line.when)


def prefix_width(services: Iterable[str]) -> int:
    return max((len(s) for s in services), default=0)


def render(line: LogLine, width: int) -> bytes:
    """Compose's form: ``service  | text``."""
    return line.service.ljust(width).encode() + b" | " + line.text + b"\n"


def show(
    logs_dir: str,
    services: list[str],
    *,
    follow: bool,
    keep_following: Callable[[], bool],
    write: Callable[[bytes], None],
    offsets: dict[str, int] | None = None,
) -> None:
    """Print the logs of ``services``: all there is, interleaved by time; with ``follow`` then
    what arrives, until ``keep_following()`` says the stack is gone. ``offsets``: where each
    service's log starts (``up`` shows only what its own run wrote)."""
    tails = [
        Tail(os.path.join(logs_dir, f"{service}.log"), service, (offsets or {}).get(service, 0))
        for service in services
    ]
    width = prefix_width(services)
    while True:
        for line in merged(tail.read() for tail in tails):
            write(render(line, width))
        if not follow:
            return
        if not keep_following():
            for line in merged(tail.read() for tail in tails):  # what came just before the end
                write(render(line, width))
            return
        time.sleep(0.1)
