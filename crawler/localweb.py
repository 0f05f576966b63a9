"""A local "web" on loopback for tests, benchmarks and the demo.

Serves registered routes (pages, JSON APIs, images, hostile responses) from a threaded HTTP
server with a large listen backlog: the standard library's default of 5 makes a concurrent
Scrapy crawl stall on refused connections.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


Handler = Callable[[Request], Response]


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Clients that drop a keep-alive connection or give up mid-response are normal here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalWeb:
    """Routes by exact path (query strings are passed to handlers). Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.routes: dict[str, Handler] = {}
        self.requests: list[Request] = []  # every request received, in order
        self._lock = threading.Lock()
        web = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server naming
                web._serve(self, send_body=True)

            def do_HEAD(self):  # noqa: N802
                web._serve(self, send_body=False)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = _Server((host, port), _Handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    # -- routes -------------------------------------------------------------------------------
    def route(self, path: str, handler: Handler | Response) -> None:
        self.routes[path] = handler if callable(handler) else (lambda _req, r=handler: r)

    def add_bytes(self, path: str, body: bytes, content_type: str, **headers: str) -> None:
        self.route(path, Response(200, body, {"Content-Type": content_type, **headers}))

    def add_html(self, path: str, html: str, **headers: str) -> None:
        self.add_bytes(path, html.encode(), "text/html; charset=utf-8", **headers)

    def add_json(self, path: str, payload, **headers: str) -> None:
        self.add_bytes(path, json.dumps(payload).encode(), "application/json", **headers)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path == path)

    # -- serving ------------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler, send_body: bool) -> None:
        parts = urlsplit(handler.path)
        request = Request(handler.command, parts.path, parse_qs(parts.query), dict(handler.headers))
        with self._lock:
            self.requests.append(request)
        route = self.routes.get(parts.path)
        response = (
            route(request) if route else Response(404, b"not found", {"Content-Type": "text/plain"})
        )
        # A client that gives up (size caps, timeouts) is expected in hostile tests.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.send_response(response.status)
            for name, value in response.headers.items():
                handler.send_header(name, value)
            if "Content-Length" not in response.headers:
                handler.send_header("Content-Length", str(len(response.body)))
            handler.end_headers()
            if send_body and response.body:
                handler.wfile.write(response.body)

    def start(self) -> LocalWeb:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalWeb:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
