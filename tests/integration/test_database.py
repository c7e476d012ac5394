"""Connections: the kept connection replaces one the server closed before sending anything on it."""

from __future__ import annotations

import importlib
import select
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from app import enqueue
from app.database import KeptConnection, make_engine
from tests.support.waiting import wait_until

enqueue_module = importlib.import_module("app.enqueue")  # ``app.enqueue`` is also the function


def _backend(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pid: int) -> None:
    """End a backend as a server restart or an idle timeout would, and wait until it is gone.
    (Through PgBouncer, the pooler may have closed that server connection already: the same.)"""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    def gone() -> bool:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            return conn.execute(query, {"pid": pid}).scalar_one() == 0

    wait_until(gone, timeout=10, what=f"backend {pid} to exit")


@pytest.fixture
def own_engine(direct_url: str) -> Iterator[Engine]:
    """A connection of its own to the server: a backend's pid names it, and it may LISTEN (behind a
    transaction pooler neither holds, and the server closing a backend is the pooler's business)."""
    engine = make_engine(direct_url)
    yield engine
    engine.dispose()


def test_a_kept_connection_is_reused_while_it_is_alive(own_engine: Engine) -> None:
    kept = KeptConnection(own_engine)
    first = _backend(kept.get())
    assert _backend(kept.get()) == first


def test_a_kept_connection_the_server_closed_is_replaced_without_an_error(
    own_engine: Engine, engine: Engine
) -> None:
    kept = KeptConnection(own_engine)
    old = _backend(kept.get())
    _terminate(engine, old)
    new = _backend(kept.get())  # would raise "server closed the connection" on the old one
    assert new != old


def test_a_kept_connection_with_harmless_input_waiting_is_kept(own_engine: Engine, engine: Engine) -> None:
    """A readable socket is pinged, not dropped: a notification waiting on it is no goodbye."""
    kept = KeptConnection(own_engine)
    conn = kept.get()
    before = _backend(conn)
    conn.exec_driver_sql("LISTEN orbit_test_channel")
    with engine.connect() as other:
        other.exec_driver_sql("NOTIFY orbit_test_channel")
        other.commit()
    driver = conn.connection.driver_connection
    assert driver is not None
    wait_until(lambda: select.select([driver.fileno()], [], [], 0)[0], timeout=10, what="the notification")
    assert _backend(kept.get()) == before


def test_enqueue_without_a_connection_survives_the_server_closing_it(
    database_url: str, direct_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enqueue() keeps a connection per thread; one the server ended is replaced, nothing is lost."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    enqueue_module.default_engine.cache_clear()
    monkeypatch.setattr(enqueue_module, "_local", type(enqueue_module._local)())
    # Ended from a direct connection: through a pooler, the terminating session could be handed the
    # very server connection it ends.
    admin = make_engine(direct_url)
    try:
        first = enqueue("test.noop", {"n": 1})
        _terminate(admin, _backend(enqueue_module._kept().get()))
        second = enqueue("test.noop", {"n": 2})
        with engine.connect() as conn:
            ids = conn.execute(text("SELECT id FROM runs ORDER BY id")).scalars().all()
        assert ids == [first, second]
    finally:
        enqueue_module._kept().drop()
        enqueue_module.default_engine().dispose()
        enqueue_module.default_engine.cache_clear()
        admin.dispose()


def test_direct_connections_carry_the_server_side_timeouts(direct_url: str) -> None:
    """The server ends a statement, or a transaction left idle, after the statement timeout."""
    engine = make_engine(direct_url, timeout=3)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "3s"
            assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "3s"
    finally:
        engine.dispose()


def test_a_pooled_connection_changes_no_session_setting(direct_url: str) -> None:
    """Through a transaction pooler a session setting would outlive the transaction on a server
    connection other clients get: with ``?pgbouncer=true`` none is made."""
    url = make_url(direct_url).update_query_dict({"pgbouncer": "true"}).render_as_string(hide_password=False)
    engine = make_engine(url, timeout=3)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
    finally:
        engine.dispose()
