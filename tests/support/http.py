"""A real HTTP client for the worker's endpoint, and free ports to serve it on."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: str


def get(port: int, path: str) -> Response:
    """GET http://127.0.0.1:port/path; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return Response(reply.status, reply.headers["Content-Type"], reply.read().decode())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers["Content-Type"], exc.read().decode())


def answers(port: int, path: str = "/metrics") -> Response | None:
    """The response, or None while nothing listens yet (for wait_until)."""
    try:
        return get(port, path)
    except (ConnectionError, urllib.error.URLError):
        return None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
