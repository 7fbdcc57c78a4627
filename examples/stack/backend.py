"""The stack's backend API: a small JSON service on the standard library's HTTP server.

    GET /api/hello    {"message": ..., "hits": N, "host": ...}; N counts every call and is kept
                      in $DATA_DIR/hits (a named volume in the stack, so it survives `down`
                      without -v)
    GET /healthz      "ok" (the stack's healthcheck asks this)

Listens on 0.0.0.0:$PORT (default 8080). SIGTERM ends it at once (``pbuild down``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA_DIR = Path(os.environ.get("DATA_DIR", "/var/lib/backend"))
_lock = threading.Lock()


def count_hit() -> int:
    """One more hit, written through a temporary file so a crash never leaves half a number."""
    with _lock:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path = DATA_DIR / "hits"
        try:
            hits = int(path.read_text()) + 1
        except (FileNotFoundError, ValueError):
            hits = 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(hits))
        tmp.replace(path)
        return hits


class Handler(BaseHTTPRequestHandler):
    server_version = "stack-backend/1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        if self.path == "/healthz":
            self.reply(200, "text/plain", b"ok\n")
        elif self.path.split("?", 1)[0] == "/api/hello":
            body = {"message": "Hello from the backend", "hits": count_hit(), "host": socket.gethostname()}
            self.reply(200, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self.reply(404, "text/plain", b"not found\n")

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        # one line per request on stdout, which `pbuild logs` collects
        print(f"backend: {self.address_string()} {format % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # PID 1 of a container has no default action for SIGTERM: exit on it explicitly
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"backend: listening on :{port}, data in {DATA_DIR}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
