"""The freezable proxy the reliability tests put between a worker and PostgreSQL, on its own."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

from tests.support.proxy import FreezableProxy, upstream_of, url_through
from tests.support.waiting import wait_until


def test_a_unix_socket_upstream_and_large_transfers_both_ways() -> None:
    """Bytes held while frozen come out whole and in order, whatever their size."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "echo.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen()

        def echo() -> None:
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

        server = threading.Thread(target=echo, daemon=True)
        server.start()
        with FreezableProxy(path) as proxy, socket.create_connection((proxy.host, proxy.port)) as client:
            client.settimeout(30)
            proxy.freeze()
            client.sendall(payload)
            wait_until(lambda: proxy.held()[0] == len(payload), timeout=10, what="the payload to be held")
            proxy.thaw()
            received = bytearray()
            while len(received) < len(payload):
                received += client.recv(65536)
            assert received == payload
        listener.close()
        server.join(timeout=10)


def test_url_through_keeps_everything_but_where_to_connect() -> None:
    proxy = FreezableProxy(("127.0.0.1", 1))
    try:
        tcp = "postgresql+psycopg://orbit:secret@db.internal:6432/orbit?pgbouncer=true"
        assert url_through(proxy, tcp) == (
            f"postgresql+psycopg://orbit:secret@127.0.0.1:{proxy.port}/orbit?pgbouncer=true"
        )
        unix = "postgresql://postgres:@/orbit_test?host=/tmp/pg/pgdata"
        assert upstream_of(unix) == "/tmp/pg/pgdata/.s.PGSQL.5432"
        assert url_through(proxy, unix) == f"postgresql://postgres:@127.0.0.1:{proxy.port}/orbit_test"
        assert upstream_of(tcp) == ("db.internal", 6432)
    finally:
        proxy.close()
