"""The supervisor's control socket: one JSON object per line, over a unix stream socket.

A client sends one request, ``{"op": "up", "spec": ..., "detach": ...}``, ``{"op": "down",
"timeout": ..., "volumes": ...}`` or ``{"op": "ping"}``, and reads events until the last:
``{"event": "progress", "text": ...}`` lines, then ``{"event": "done", "ok": true}`` or
``{"event": "done", "ok": false, "message": ..., "hint": ..., "code": ...}``.

The socket is ``control.sock`` in the stack's folder (0700, so only its owner reaches it; the
supervisor also checks the peer's uid with ``SO_PEERCRED``). A unix socket path has at most 108
bytes and the runtime directory may be deep, so the client connects through a directory fd
(``/proc/self/fd/N/control.sock``) and the supervisor binds it relative to its working directory.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.state import SOCKET_FILE

MAX_MESSAGE = 16 * 1024 * 1024  # a spec of many services is still far below this


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, sort_keys=True).encode() + b"\n"


def connect(stack_dir: str, timeout: float | None = None) -> socket.socket:
    """A connection to the stack's supervisor; ``OSError`` when nothing listens."""
    dir_fd = os.open(stack_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_FILE}")
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(dir_fd)
    return sock


def request(
    stack_dir: str, message: dict[str, Any], on_progress: Callable[[str], None], timeout: float | None = None
) -> dict[str, Any]:
    """Send ``message`` and pass each progress line to ``on_progress``; return the ``done`` event.

    ``OSError`` when the supervisor cannot be reached or hangs up before it answered (it died)."""
    with connect(stack_dir, timeout) as sock:
        sock.sendall(encode(message))
        reader = sock.makefile("rb")
        while True:
            line = reader.readline(MAX_MESSAGE)
            if not line:
                raise ConnectionResetError("the stack's supervisor hung up")
            try:
                event = json.loads(line)
            except ValueError:
                raise StackError(f"the stack's supervisor sent a damaged message: {line[:200]!r}") from None
            if event.get("event") == "progress":
                on_progress(str(event.get("text", "")))
            elif event.get("event") == "done":
                return dict(event)


def failure(error: StackError) -> dict[str, Any]:
    """The ``done`` event of a failed request."""
    return {"event": "done", "ok": False, "message": error.message, "hint": error.hint, "code": error.exit_code}


def raise_failure(event: dict[str, Any]) -> None:
    """Raise the error a failed ``done`` event carries."""
    if not event.get("ok"):
        raise StackError(
            str(event.get("message") or "the stack's supervisor failed"),
            hint=event.get("hint"),
            exit_code=int(event.get("code") or 1),
        )
