"""The HTTP endpoint: /metrics in Prometheus text, /health as JSON with 200 or 503, per-process ports."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from app.health import Health, Problem, Status
from app.http_server import HttpServer, HttpServerError
from app.settings import load_settings
from tests.support.http import get, samples
from tests.support.waiting import wait_until


@pytest.fixture
def serve() -> Iterator[Callable[[Health], HttpServer]]:
    servers: list[HttpServer] = []

    def start(health: Health) -> HttpServer:
        registry = CollectorRegistry()
        Counter("orbit_example", "an example", registry=registry).inc(3)
        server = HttpServer("127.0.0.1", 0, registry, lambda: health)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_metrics_are_served_in_prometheus_text(serve: Callable[[Health], HttpServer]) -> None:
    """GET /metrics returns the registry in the Prometheus text format."""
    server = serve(Health())
    reply = get(server.port, "/metrics")
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain")
    assert samples(reply.body)[("orbit_example_total", ())] == 3.0


@pytest.mark.parametrize(
    ("problems", "code", "status"),
    [
        ([], 200, "healthy"),
        ([Problem(Status.WARNING, "slow")], 200, "warning"),
        ([Problem(Status.WARNING, "slow"), Problem(Status.ERROR, "database unreachable")], 503, "error"),
    ],
)
def test_health_is_200_unless_error(
    serve: Callable[[Health], HttpServer], problems: list[Problem], code: int, status: str
) -> None:
    """GET /health answers the guide's JSON, 200 when healthy or warning and 503 on error."""
    server = serve(Health(problems, None, 2))
    reply = get(server.port, "/health")
    body = json.loads(reply.body)
    assert (reply.status, body["status"], body["stuckRuns"]) == (code, status, 2)
    assert set(body) >= {"status", "message", "lastActivity", "stuckRuns"}
    if status == "error":
        assert body["message"] == "database unreachable"


def test_unknown_paths_are_404(serve: Callable[[Health], HttpServer]) -> None:
    """Anything but /metrics and /health is not found."""
    assert get(serve(Health()).port, "/admin").status == 404


def test_a_taken_port_is_a_one_line_error() -> None:
    """Binding a port already in use raises HttpServerError naming host and port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer("127.0.0.1", port, CollectorRegistry(), Health)
        with pytest.raises(HttpServerError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            server.start()


def test_each_supervised_process_takes_its_own_port() -> None:
    """METRICS_PORT + ORBIT_PROCESS_NUM; METRICS_PORT=0 keeps the endpoint off."""
    assert load_settings(METRICS_PORT=9400, ORBIT_PROCESS_NUM=2).metrics_port == 9402
    assert load_settings(METRICS_PORT=0, ORBIT_PROCESS_NUM=2).metrics_port == 0


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_capped_and_timed_out() -> None:
    """Connections that send nothing hold at most the cap of threads, each for the read timeout."""
    server = HttpServer("127.0.0.1", 0, CollectorRegistry(), Health, read_timeout=0.5, max_connections=4)
    server.start()
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    try:
        wait_until(lambda: sum(map(_closed_by_server, idle)) >= 26, what="connections past the cap closed")
        assert threading.active_count() <= before + 4
        wait_until(lambda: all(map(_closed_by_server, idle)), what="idle connections timed out")
        wait_until(lambda: threading.active_count() <= before, what="their threads to end")
        assert get(server.port, "/health").status == 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()
