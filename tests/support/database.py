"""Where the test database comes from: ORBIT_TEST_DATABASE_URL, else Docker, else embedded."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from app.database import libpq_url, sqlalchemy_url


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def server_url(workdir: Path) -> Iterator[str]:
    """A Postgres server for this test session (URL of its maintenance database)."""
    given = os.environ.get("ORBIT_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    from app.embedded import embedded_url

    yield embedded_url(workdir)


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on ``server``, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"orbit_test_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(sqlalchemy_url(server))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(sqlalchemy_url(server), name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)
