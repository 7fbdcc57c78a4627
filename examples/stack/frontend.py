"""The stack's frontend: an HTML page that asks the backend (by its service name) on each request.

    GET /          the page, with the backend's answer to /api/hello
    GET /healthz   "ok"

Listens on 0.0.0.0:$PORT (default 8080); the backend is $BACKEND_URL (default
http://backend:8080/), which resolves through the stack's /etc/hosts. A backend that does not
answer makes the page say so with 502, so a broken link between services shows.
"""

from __future__ import annotations

import html
import json
import os
import signal
import sys
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKEND_URL = os.environ.get("BACKEND_URL", "http://backend:8080/")

PAGE = """<!doctype html>
<html><head><title>pbuild stack</title><link rel="stylesheet" href="/static/style.css"></head>
<body><h1>{message}</h1><p>hits: {hits}; served by the frontend, answered by backend {host}</p></body></html>
"""


def ask_backend() -> dict[str, object]:
    url = urllib.parse.urljoin(BACKEND_URL, "api/hello")
    with urllib.request.urlopen(url, timeout=5) as response:
        answer: dict[str, object] = json.load(response)
        return answer


class Handler(BaseHTTPRequestHandler):
    server_version = "stack-frontend/1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        if self.path == "/healthz":
            self.reply(200, "text/plain", b"ok\n")
            return
        if self.path not in ("/", "/index.html"):
            self.reply(404, "text/plain", b"not found\n")
            return
        try:
            answer = ask_backend()
        except (OSError, ValueError) as err:  # URLError is an OSError; ValueError: bad JSON
            self.reply(502, "text/plain", f"backend {BACKEND_URL} did not answer: {err}\n".encode())
            return
        page = PAGE.format(**{k: html.escape(str(answer.get(k, ""))) for k in ("message", "hits", "host")})
        self.reply(200, "text/html; charset=utf-8", page.encode())

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        print(f"frontend: {self.address_string()} {format % args}", flush=True)


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"frontend: listening on :{port}, backend {BACKEND_URL}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
