"""pbuild.lib.http, the exchange the remote cache and the registry client share: a kept-alive
connection the server closed is replaced once, failures are classified for each client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbuild.lib import http


@pytest.fixture
def closing_server() -> Iterator[tuple[str, list[int]]]:
    """A server that answers one request per connection with keep-alive, then closes it anyway
    (as servers do when their idle timeout ends); yields its address and the connection count."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()


def test_a_closed_kept_alive_connection_is_replaced_once(closing_server: tuple[str, list[int]]) -> None:
    netloc, accepted = closing_server
    pool = http.ConnectionPool("http", netloc, 10)
    received: list[bytes] = []
    for _ in range(3):
        response = http.exchange(pool, "GET", "/x", headers={}, sink=received.append)
        assert response.status == 200 and response.header("content-length") == "2"
    assert received == [b"ok"] * 3 and len(accepted) == 3
    pool.close()


def test_failures_are_classified(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = http.ConnectionPool("http", f"127.0.0.1:{port}", 5)
    with pytest.raises(http.Unreachable) as info:
        http.exchange(pool, "GET", "/", headers={})
    assert isinstance(info.value.cause, ConnectionRefusedError) and info.value.phase == "request"

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts (in the kernel) and never answers
    try:
        slow = http.ConnectionPool("http", f"127.0.0.1:{silent.getsockname()[1]}", 0.3)
        with pytest.raises(http.ExchangeTimedOut):
            http.exchange(slow, "PUT", "/", headers={}, body=b"x")
    finally:
        silent.close()
