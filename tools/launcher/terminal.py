"""The container's stdio: inherited fds, a log file (``-d``), or a pty (``-t``) that the launcher
relays to its own terminal, in raw mode, passing on the window size as it changes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
from collections.abc import Callable

from pbuild.tools.launcher.process import Stdio

_DEFAULT_SIZE = (24, 80)


def _window_size() -> tuple[int, int]:
    for fd in (1, 0, 2):
        if os.isatty(fd):
            with contextlib.suppress(OSError):
                rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
                if rows and cols:
                    return rows, cols
    return _DEFAULT_SIZE


def _set_size(fd: int, size: tuple[int, int]) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def open_stdio(interactive: bool, tty: bool, log_path: str | None) -> tuple[Stdio, Callable[[], None]]:
    """The fds for the container and a function that restores the caller's terminal."""
    owned: list[int] = []
    if log_path is not None:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        return Stdio(null, log, log, owned=(null, log)), lambda: None
    if not tty:
        if interactive:
            stdin = 0
        else:
            stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            owned.append(stdin)
        return Stdio(stdin, 1, 2, owned=tuple(owned)), lambda: None
    import socket

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_fd, child_fd = parent.detach(), child.detach()
    os.set_inheritable(child_fd, False)
    restore: Callable[[], None] = lambda: None  # noqa: E731
    if interactive and os.isatty(0):
        import tty as tty_module

        saved = termios.tcgetattr(0)
        tty_module.setraw(0)

        def restore() -> None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)

    stdio = Stdio(
        -1, -1, -1, pty_socket=child_fd, pty_parent=parent_fd, window=_window_size(), owned=(child_fd,)
    )
    return stdio, restore


def receive_master(stdio: Stdio) -> int | None:
    """The pty master the container sent, or None if it ended before opening one."""
    import socket

    with socket.socket(fileno=stdio.pty_parent) as channel:
        try:
            _, fds, _, _ = socket.recv_fds(channel, 1, 1)
        except OSError:
            return None
    return fds[0] if fds else None


def proxy(stdio: Stdio, interactive: bool) -> None:
    """Copy our stdin to the pty and the pty to our stdout until the container closes it."""
    master = receive_master(stdio)
    if master is None:
        return

    def on_winch(_signum: int, _frame: object) -> None:
        _set_size(master, _window_size())

    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGWINCH, on_winch)
    watch = [master] + ([0] if interactive else [])
    try:
        while True:
            try:
                readable, _, _ = select.select(watch, [], [])
            except InterruptedError:
                continue
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:  # every slave fd is closed: the container ended
                        return
                    raise
                if not data:
                    return
                write_all(1, data)
            if 0 in readable:
                data = os.read(0, 65536)
                if data:
                    write_all(master, data)
                else:
                    watch.remove(0)
                    write_all(master, b"\x04")  # EOF on our stdin: ^D to the pty
    finally:
        os.close(master)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a pipe or pty takes part at a time)."""
    while data:
        try:
            data = data[os.write(fd, data) :]
        except InterruptedError:
            continue
