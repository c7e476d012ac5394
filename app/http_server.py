"""The worker's HTTP endpoint: ``GET /metrics`` (Prometheus text) and ``GET /health`` (JSON).

A daemon thread serves it so a slow scrape never delays the worker loop; the loop's state is only
read, never changed, from here. Health answers 200 when healthy or warning and 503 on error.

Each connection gets a thread, so both are bounded: a connection that sends nothing is closed after
``read_timeout``, and past ``max_connections`` at once a new one is closed unanswered (a scraper
retries at its next interval).
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
READ_TIMEOUT = 10.0  # seconds; a scrape sends its request at once
MAX_CONNECTIONS = 16  # Prometheus and a health check or two need a few


class HttpServerError(Exception):
    """The endpoint cannot listen (port taken, bad host); the message is one line."""


class HttpServer:
    """Serves ``registry`` and ``health()`` on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Callable[[], Health],
        *,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host, self.requested_port = host, port
        self._registry, self._health = registry, health
        self._read_timeout, self._max_connections = read_timeout, max_connections
        self._server: _BoundedServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        try:
            self._server = _BoundedServer(
                (self.host, self.requested_port), self._handler(), self._max_connections
            )
        except OSError as exc:
            raise HttpServerError(
                f"cannot serve metrics on {self.host}:{self.requested_port}: {exc.strerror or exc}"
            ) from None
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
            timeout = server._read_timeout  # on the socket: reading the request, and writing the reply

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


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
