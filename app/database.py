"""Connections: which database, engines, masking of secrets and the schema version check."""

from __future__ import annotations

import contextlib
import os
import re
import select
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
ALEMBIC_INI = MIGRATIONS_DIR.parent / "alembic.ini"


class DatabaseError(Exception):
    """The database cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Database:
    """Where the queue lives: the pooled URL, the direct URL (migrations, LISTEN)."""

    url: str
    direct_url: str
    embedded: bool

    @property
    def masked(self) -> str:
        return mask_url(self.url)


def resolve(settings: Settings) -> Database:
    """The configured database; starts the embedded server when ``DATABASE_URL`` is unset."""
    if settings.DATABASE_URL:
        direct = settings.DIRECT_URL or settings.DATABASE_URL
        return Database(sqlalchemy_url(settings.DATABASE_URL), sqlalchemy_url(direct), False)
    from app.embedded import embedded_url

    url = sqlalchemy_url(embedded_url(settings.DATA_DIR))
    return Database(url, url, True)


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs as they are; use the psycopg 3 driver."""
    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
    # PgBouncer-style hints from other tools are not libpq options.
    return re.sub(r"([?&])pgbouncer=[^&]*&?", r"\1", url).rstrip("?&")


def libpq_url(url: str) -> str:
    """The same URL for plain psycopg (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and messages."""
    try:
        parsed = make_url(url)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    return parsed.render_as_string(hide_password=True)


@contextlib.contextmanager
def scratch_database(server: str, prefix: str = "orbit_test") -> Iterator[str]:
    """A new, empty database on ``server``, dropped afterwards; yields its SQLAlchemy URL.

    Used by the tests and the benchmark, so neither ever touches the database of ``server``.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(sqlalchemy_url(server))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(sqlalchemy_url(server)).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5, "application_name": "orbit"},
    )


_INHERITED: list[Connection] = []


class KeptConnection:
    """One connection a process keeps for its short statements, in autocommit.

    A pool check-out with ``pool_pre_ping`` costs a round trip and about 150 µs of CPU before
    every statement; a kept connection costs neither. Instead of the ping, its socket is looked at
    before each use: an idle connection has nothing to read, so only a readable one is pinged, and
    replaced if the server closed it (a restart, an idle timeout, a terminated backend) before
    the statement is sent. In a forked child the parent's connection is left alone.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._pid = 0

    def get(self) -> Connection:
        if self._conn is not None and not self._usable(self._conn):
            self.drop()
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._pid = os.getpid()
        return self._conn

    def drop(self) -> None:
        """Close the connection (after an error, or to stop); the next ``get`` opens another."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pid != os.getpid():
            # Closing (or garbage-collecting) it here would end the parent's session on the
            # shared socket: it is kept, unused, for the life of this process.
            _INHERITED.append(conn)
            return
        with contextlib.suppress(SQLAlchemyError):
            conn.invalidate()
            conn.close()

    def _usable(self, conn: Connection) -> bool:
        if self._pid != os.getpid() or conn.invalidated or conn.closed:
            return False
        driver = conn.connection.driver_connection
        if not isinstance(driver, psycopg.Connection) or driver.closed or driver.broken:
            return False
        readable, _, _ = select.select([driver.fileno()], [], [], 0)
        if not readable:
            return True
        # Most likely the server's goodbye (or nothing at all: the connection is closed). Anything
        # else the server may send unasked (a parameter change, TLS housekeeping) passes a ping.
        try:
            driver.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True


@cache
def _head_revision() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config(str(ALEMBIC_INI))
    return ScriptDirectory.from_config(config).get_current_head()


def alembic_config(url: str) -> object:
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema (Alembic), holding an advisory lock so concurrent callers queue up."""
    from alembic import command
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(7270185)"))
            config = alembic_config(url)
            config.attributes["connection"] = conn  # type: ignore[attr-defined]
            command.upgrade(config, revision)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn  # type: ignore[attr-defined]
            command.downgrade(config, revision)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Refuse to work against a schema that is behind this code."""
    current, head = current_revision(engine), _head_revision()
    if current != head:
        raise DatabaseError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: run `orbit migrate`"
        )


def migration_url() -> str:
    """The URL migrations use when Alembic is run directly: DIRECT_URL, DATABASE_URL or embedded."""
    from alembic import context

    passed = context.config.attributes.get("url")
    if passed:
        return str(passed)
    from app.settings import load_settings_or_exit

    return resolve(load_settings_or_exit()).direct_url
