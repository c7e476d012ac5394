"""app.testing, for users' own tests: databases of their own, migrated or empty, dropped afterwards."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

from app import enqueue
from app.database import check_schema, current_revision, libpq_url, make_engine
from app.testing import migrated_database, scratch_database
from tests.support.servers import TestServer


def _exists(server: TestServer, url: str) -> bool:
    name = make_url(url).database
    with psycopg.connect(libpq_url(server.admin_url), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_a_migrated_database_takes_runs_and_is_dropped_afterwards(server: TestServer) -> None:
    """migrated_database yields a database at this version's schema, then drops it."""
    with migrated_database(server.admin_url, prefix="orbit_users") as url:
        assert make_url(url).database.startswith("orbit_users_")
        engine = make_engine(url)
        check_schema(engine)
        with engine.begin() as conn:
            assert enqueue("test.noop", {}, connection=conn) > 0
        engine.dispose()
    assert not _exists(server, url)


def test_a_scratch_database_is_empty_and_dropped_even_while_connected(server: TestServer) -> None:
    """scratch_database yields a database with no schema, and drops it with a connection still open."""
    with scratch_database(server.admin_url) as url:
        engine = make_engine(url)
        assert current_revision(engine) is None
        held = psycopg.connect(libpq_url(url))
    assert not _exists(server, url)
    held.close()
    engine.dispose()
