"""For your own tests: a database of their own, on a real PostgreSQL, at Orbit's schema.

Test pipelines against PostgreSQL itself: the queue is its tables. :func:`migrated_database`
creates a new database on a server you name, migrates it, yields its URL and drops it afterwards,
so tests never touch the server's other databases. With pytest, a fixture in ``conftest.py``::

    import os

    import pytest

    from app.testing import migrated_database


    @pytest.fixture(scope="session")
    def database_url():
        with migrated_database(os.environ["TEST_SERVER_URL"]) as url:
            yield url

Give that URL to Orbit as ``DATABASE_URL`` (a worker or ``orbit`` subprocess, or
``load_settings(DATABASE_URL=url)`` in the test process). The server URL needs a role that may
create databases. To use the embedded server Orbit starts when ``DATABASE_URL`` is unset, pass
``app.embedded.embedded_url(data_dir)``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from app.database import libpq_url, migrate, sqlalchemy_url


@contextlib.contextmanager
def scratch_database(server: str, prefix: str = "orbit_test") -> Iterator[str]:
    """A new, empty database on ``server`` (any database URL of it), dropped afterwards, even
    with connections still open; yields its URL (``postgresql+psycopg://``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(sqlalchemy_url(server))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(sqlalchemy_url(server)).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def migrated_database(server: str, prefix: str = "orbit_test") -> Iterator[str]:
    """:func:`scratch_database`, migrated to the schema of this version of Orbit."""
    with scratch_database(server, prefix) as url:
        migrate(url)
        yield url
