"""The worker's HTTP endpoint: ``GET /metrics`` (Prometheus text) and ``GET /health`` (JSON).

A daemon thread serves it so a slow scrape never delays the worker loop; the loop's state is only
read, never changed, from here. Health answers 200 when healthy or warning and 503 on error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.health import Health, Status

log = structlog.get_logger("orbit.http")


class HttpServerError(Exception):
    """The endpoint cannot listen (port taken, bad host); the message is one line."""


class HttpServer:
    """Serves ``registry`` and ``health()`` on ``host:port`` (port 0: any free port)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: Callable[[], Health]
    ) -> None:
        self.host, self.requested_port = host, port
        self._registry, self._health = registry, health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        try:
            self._server = ThreadingHTTPServer((self.host, self.requested_port), self._handler())
        except OSError as exc:
            raise HttpServerError(
                f"cannot serve metrics on {self.host}:{self.requested_port}: {exc.strerror or exc}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="orbit-http", daemon=True)
        self._thread.start()
        log.info("Serving /metrics and /health", host=self.host, port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server._registry))
                elif path == "/health":
                    health = server._health()
                    code = 503 if health.status is Status.ERROR else 200
                    self._send(code, "application/json", json.dumps(health.as_json()).encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Scrapes every few seconds would drown the log at info level.
                log.debug("HTTP request", request=format % args)

        return Handler
