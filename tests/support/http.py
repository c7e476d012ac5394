"""A real HTTP client for the worker's endpoint, free ports to serve it on, and the port a
started ``orbit serve`` announces."""

from __future__ import annotations

import os
import select
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import IO

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ANNOUNCED = b"Orbit console: http://"


def announced_port(stdout: IO[bytes], timeout: float = 60) -> int:
    """The port of the URL ``orbit serve --port 0`` prints on ``stdout`` once its socket is bound.
    RuntimeError when it exits first or says nothing within ``timeout``."""
    deadline, seen = time.monotonic() + timeout, b""
    while ANNOUNCED not in seen or not seen.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"orbit serve did not listen within {timeout:g}s (printed {seen!r:.200})")
        readable, _, _ = select.select([stdout], [], [], left)
        if readable:
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"orbit serve exited before listening (printed {seen!r:.200})")
            seen += chunk
    url = seen[seen.index(ANNOUNCED) + len(ANNOUNCED) :].split(b"/", 1)[0]
    return int(url.rsplit(b":", 1)[1])


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
