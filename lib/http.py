"""One HTTP/1.1 exchange over kept-alive connections: what pbuild's HTTP clients share.

The remote cache (Bazel's HTTP protocol) and the OCI registry client both send a body from
bytes or straight from a file, stream a ``200`` body into a sink, keep connections alive, and
replace once a kept-alive connection the server closed meanwhile. They differ in what a failure
means (the remote cache falls back to building locally; a push fails with a message), so a
failure here is an :class:`ExchangeError` naming its kind and phase, for each client to say in
its own words.

Written on :mod:`http.client` rather than a client library: streamed uploads from files, a sink
for downloads and a small pool are little code, and no dependency.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

READ_CHUNK = 1 << 20
SEND_BLOCK = 1 << 18
POOL_SIZE = 16


@dataclass(frozen=True)
class Response:
    """A server's answer: status, reason, headers and the body (empty when it went to a sink)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class ExchangeError(Exception):
    """An exchange that failed on the way; ``cause`` is the underlying exception.

    ``phase`` is ``"request"`` (sending, or waiting for the status line) or ``"body"`` (reading
    the answer's body).
    """

    def __init__(self, cause: BaseException, *, phase: str) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.phase = phase


class ConnectionLost(ExchangeError):
    """The server closed or reset the connection."""


class ExchangeTimedOut(ExchangeError):
    """The server did not answer within the timeout."""


class Unreachable(ExchangeError):
    """Any other failure to talk to the server (refused, no route, a bad status line)."""


class TlsFailed(Unreachable):
    """The TLS handshake failed (often: the server speaks plain HTTP)."""


_LOST = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _classify(exc: BaseException, phase: str) -> ExchangeError | None:
    if isinstance(exc, _LOST):
        return ConnectionLost(exc, phase=phase)
    if isinstance(exc, ssl.SSLError):
        return TlsFailed(exc, phase=phase)
    if isinstance(exc, TimeoutError):
        return ExchangeTimedOut(exc, phase=phase)
    if isinstance(exc, OSError | http.client.HTTPException):
        return Unreachable(exc, phase=phase)
    return None


class ConnectionPool:
    """Idle keep-alive connections to one server (``scheme`` and ``host[:port]``); thread-safe."""

    def __init__(self, scheme: str, netloc: str, timeout: float, *, size: int = POOL_SIZE) -> None:
        self.scheme = scheme
        self.netloc = netloc
        self.timeout = timeout
        self._size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.netloc, timeout=self.timeout, blocksize=SEND_BLOCK)
        return http.client.HTTPConnection(self.netloc, timeout=self.timeout, blocksize=SEND_BLOCK)

    def get(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (and so may have been closed by the server)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new(), False

    def put(self, conn: http.client.HTTPConnection) -> None:
        """Keep ``conn`` for the next exchange (or close it when the pool is full)."""
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def exchange(pool: ConnectionPool, method: str, path: str, *, headers: Mapping[str, str],
             body: bytes | None = None, body_path: str | None = None,
             sink: Callable[[bytes], None] | None = None) -> Response:
    """Send one request to ``pool``'s server; the body comes from ``body`` or the file ``body_path``.

    A ``200`` body goes to ``sink`` when one is given. A kept-alive connection the server closed
    in the meantime is replaced once without counting as a failure: that is normal keep-alive
    behaviour, not trouble. Failures raise :class:`ExchangeError` subclasses; what ``sink``
    raises, other than an ``OSError``, passes through unchanged.
    """
    for fresh_retry in (False, True):
        conn, reused = pool.get()
        try:
            if body_path is not None:
                with open(body_path, "rb") as handle:
                    conn.request(method, path, body=handle, headers=dict(headers))
            else:
                conn.request(method, path, body=body, headers=dict(headers))
            resp = conn.getresponse()
        except BaseException as exc:
            conn.close()
            error = _classify(exc, "request")
            if error is None:
                raise
            if isinstance(error, ConnectionLost) and reused and not fresh_retry:
                continue
            raise error from None
        try:
            if resp.status == 200 and sink is not None:
                while chunk := resp.read(READ_CHUNK):
                    sink(chunk)
                data = b""
            else:
                data = resp.read()
        except BaseException as exc:
            conn.close()  # the rest of the body is unread: the connection cannot be reused
            error = _classify(exc, "body")
            if error is None:
                raise
            raise error from None
        if resp.will_close:
            conn.close()
        else:
            pool.put(conn)
        return Response(resp.status, resp.reason, dict(resp.getheaders()), data)
    raise AssertionError("unreachable")
