"""The tests' own tools: the freezable proxy and the test servers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.database import libpq_url, make_engine
from tests.support import servers
from tests.support.proxy import FreezableProxy, proxy_for, url_through
from tests.support.servers import TestServer
from tests.support.waiting import wait_until

LOCK = 7_270_186  # an advisory lock key no other test takes


def _connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=30, **kwargs)


def _backend(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _activity(watcher: psycopg.Connection[Any], pid: int) -> tuple[str, str, str | None]:
    query = "SELECT state, query, wait_event_type FROM pg_stat_activity WHERE pid = %s"
    row = watcher.execute(query, (pid,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


class Call:
    """``fn`` in a thread; ``done`` once it returned or raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as error:
            self.error = error
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float = 30) -> Any:
        assert self._done.wait(timeout), f"the call did not return within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def proxy(direct_url: str) -> Iterator[FreezableProxy]:
    with proxy_for(direct_url) as proxy:
        yield proxy


def test_a_frozen_proxy_holds_a_query_and_thawing_delivers_it(proxy: FreezableProxy, direct_url: str) -> None:
    with _connect(url_through(proxy, direct_url)) as conn, _connect(direct_url) as watcher:
        pid = _backend(conn)
        proxy.freeze()
        call = Call(lambda: conn.execute("SELECT 42").fetchone())
        wait_until(lambda: proxy.held()[0] > 0, timeout=10, what="the query to reach the proxy")
        # The server never got it: its backend is idle after the query before.
        assert _activity(watcher, pid)[:2] == ("idle", "SELECT pg_backend_pid()")
        assert not call.done
        proxy.thaw()
        assert call.result(timeout=10) == (42,)
        assert _backend(conn) == pid, "the connection survived the freeze"


def test_a_frozen_proxy_holds_the_reply_too(proxy: FreezableProxy, direct_url: str) -> None:
    """The query reaches the server, which answers while the proxy is frozen: the client waits."""
    with _connect(url_through(proxy, direct_url)) as conn, _connect(direct_url) as holder:
        pid = _backend(conn)
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        locked = "SELECT 7 FROM (SELECT pg_advisory_lock(%s)) AS locked"
        call = Call(lambda: conn.execute(locked, (LOCK,)).fetchone())
        wait_until(lambda: _activity(holder, pid)[2] == "Lock", timeout=10, what="the query to wait")
        proxy.freeze()
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
        wait_until(lambda: proxy.held()[1] > 0, timeout=10, what="the reply to reach the proxy")
        assert _activity(holder, pid)[0] == "idle", "the server has answered"
        assert not call.done
        proxy.thaw()
        assert call.result(timeout=10) == (7,)


def test_a_connection_opened_while_frozen_is_served_after_thawing(
    proxy: FreezableProxy, direct_url: str
) -> None:
    proxy.freeze()
    call = Call(lambda: _connect(url_through(proxy, direct_url)).execute("SELECT 1").fetchone())
    assert proxy.connections == 0, "nothing is accepted while frozen"
    assert not call.done
    proxy.thaw()
    assert call.result(timeout=30) == (1,)


def test_a_server_close_while_frozen_reaches_the_client_after_thawing(
    proxy: FreezableProxy, direct_url: str
) -> None:
    with _connect(url_through(proxy, direct_url)) as conn, _connect(direct_url) as killer:
        pid = _backend(conn)
        proxy.freeze()
        killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(
            lambda: (
                killer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                == (0,)
            ),
            timeout=10,
            what="the backend to exit",
        )
        assert not conn.closed and not conn.broken, "the client knows nothing yet"
        proxy.thaw()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


def test_closing_the_proxy_cuts_its_connections(proxy: FreezableProxy, direct_url: str) -> None:
    with _connect(url_through(proxy, direct_url)) as conn:
        _backend(conn)
        proxy.close()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


# --- the servers -----------------------------------------------------------------------------------


def test_the_session_server_is_the_chosen_one(server: TestServer, database_url: str, direct_url: str) -> None:
    assert server.kind == servers.chosen_kind()
    assert server.version >= 140000
    assert isinstance(server.jit, bool)
    assert server.pooled == (database_url != direct_url)
    assert ("pgbouncer=true" in database_url) == server.pooled
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() in direct_url
    finally:
        engine.dispose()


def test_pgbouncer_in_front_pools_in_transaction_mode_and_refuses_startup_options(
    server: TestServer,
) -> None:
    with servers.pgbouncer_in_front(server) as pooled, pooled.scratch_database() as database:
        assert database.url != database.direct_url
        plain = database.url.replace("?pgbouncer=true", "")
        with _connect(plain, prepare_threshold=None) as conn:
            name = make_url(database.direct_url).database
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
        with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
            _connect(plain, options="-c statement_timeout=1000")
