"""Connections: which database, engines, masking of secrets and the schema version check."""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.deadlines import DEADLINES, DeadlineExceeded
from app.masking import mask_url as mask_url  # re-exported: Database.masked's helper
from app.masking import one_line
from app.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic's scripts, beside this package: the top-level migrations/ of a checkout, or the
# `migrations` package an installed wheel puts next to `app`. Found by place rather than by
# `import migrations`, which could pick up a user's own package of that name.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
DEFAULT_TIMEOUT = 10.0  # seconds: STATEMENT_TIMEOUT with the default heartbeat


class DatabaseError(Exception):
    """The database cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Database:
    """Where the queue lives, and how to talk to it.

    ``url`` may go through a pooler; ``direct_url`` reaches the server itself (migrations,
    LISTEN). With ``pgbouncer`` the pooled URL is used only in ways a transaction pooler carries:
    no server-side prepared statements, no session settings. ``timeout`` is every statement's
    deadline in seconds.
    """

    url: str
    direct_url: str
    embedded: bool
    pgbouncer: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def setting_url(self) -> str:
        """``url`` as DATABASE_URL would give it (with its PgBouncer hint), for a child process."""
        url = make_url(self.url)
        if self.pgbouncer:
            url = url.update_query_dict({"pgbouncer": "true"})
        return url.render_as_string(hide_password=False)

    @property
    def deadline(self) -> float:
        """When the client gives up on a call the server has not ended: the server's own timeout
        comes first when the server can still speak; this is for when it cannot."""
        return client_deadline(self.timeout)

    def engine(self, *, pool_size: int = 2, bounded: bool = True) -> Engine:
        """An engine on the (possibly pooled) URL, with this database's connection policy; with
        ``bounded``, each statement is cut at :attr:`deadline` (see app.deadlines)."""
        return make_engine(
            self.url, pool_size=pool_size, pgbouncer=self.pgbouncer, timeout=self.timeout, bounded=bounded
        )

    def connect_direct(self) -> psycopg.Connection[Any]:
        """A plain psycopg connection in autocommit to the server itself (for LISTEN)."""
        url = libpq_url(self.direct_url)
        return psycopg.connect(url, autocommit=True, **connect_args(pgbouncer=False, timeout=self.timeout))


def resolve(settings: Settings) -> Database:
    """The configured database; starts the embedded server when ``DATABASE_URL`` is unset."""
    timeout = settings.statement_timeout.total_seconds()
    if settings.DATABASE_URL:
        direct = settings.DIRECT_URL or settings.DATABASE_URL
        pooled = settings.PGBOUNCER or says_pgbouncer(settings.DATABASE_URL)
        url, direct_url = sqlalchemy_url(settings.DATABASE_URL), sqlalchemy_url(direct)
        return Database(url, direct_url, False, pgbouncer=pooled, timeout=timeout)
    from app.embedded import embedded_url

    url = sqlalchemy_url(embedded_url(settings.DATA_DIR))
    return Database(url, url, True, timeout=timeout)


def says_pgbouncer(url: str) -> bool:
    """True when the URL carries Prisma's ``pgbouncer=true`` hint (also ``1``, ``yes``, ``on``)."""
    match = re.search(r"[?&]pgbouncer=([^&]*)", url)
    return match is not None and match.group(1).lower() in ("true", "1", "yes", "on")


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs as they are; use the psycopg 3 driver."""
    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
    # PgBouncer-style hints from other tools are not libpq options.
    return re.sub(r"([?&])pgbouncer=[^&]*&?", r"\1", url).rstrip("?&")


def libpq_url(url: str) -> str:
    """The same URL for plain psycopg (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def connect_args(*, pgbouncer: bool, timeout: float) -> dict[str, Any]:
    """libpq and psycopg options of every connection Orbit opens.

    A dead peer or a partition is noticed within about ``timeout``: the kernel gives up on data
    left unacknowledged for that long (``tcp_user_timeout``), and an idle connection is probed
    from half of it on (keepalives). Through PgBouncer in transaction mode, psycopg must not
    prepare statements on the server (it does after five executions of one statement): the next
    transaction may run on another server connection, which does not have them.
    """
    args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(timeout / 2)),
        "application_name": "orbit",
        "keepalives": 1,
        "keepalives_idle": max(1, round(timeout / 2)),
        "keepalives_interval": max(1, round(timeout / 6)),
        "keepalives_count": 3,
        "tcp_user_timeout": round(timeout * 1000),
    }
    if pgbouncer:
        args["prepare_threshold"] = None
    return args


# The server ends a statement, or a transaction left idle, after the deadline; set per session,
# not as a startup option, which PgBouncer (even in session mode) refuses.
_SESSION_TIMEOUTS = (
    "SELECT set_config('statement_timeout', %(ms)s, false),"
    " set_config('idle_in_transaction_session_timeout', %(ms)s, false)"
)


def client_deadline(timeout: float) -> float:
    return timeout + max(1.0, timeout / 2)


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    pgbouncer: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    bounded: bool = False,
) -> Engine:
    """An engine with Orbit's connection policy (see :func:`connect_args`).

    ``pgbouncer`` defaults to what the URL says (``?pgbouncer=true``). Without it, each new
    connection gets the server-side timeouts; through a transaction pooler a session setting
    would stay on a server connection other clients then use, so there only the client-side
    deadline and the pooler's own timeouts apply.
    """
    pooled = says_pgbouncer(url) if pgbouncer is None else pgbouncer
    engine = create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args(pgbouncer=pooled, timeout=timeout),
    )
    if not pooled:
        ms = str(round(timeout * 1000))

        @event.listens_for(engine, "connect")
        def _session_timeouts(dbapi_connection: Any, _: Any) -> None:
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            dbapi_connection.execute(_SESSION_TIMEOUTS, {"ms": ms})
            dbapi_connection.autocommit = autocommit

    if bounded:
        bound_statements(engine, client_deadline(timeout))
    return engine


def bound_statements(engine: Engine, seconds: float) -> None:
    """Cut the connection of any statement of ``engine`` still unanswered after ``seconds``."""

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Connection, cursor: Any, *_: Any) -> None:
        conn.info["orbit_deadline"] = DEADLINES.start(cursor.connection.fileno(), seconds)

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn: Connection, *_: Any) -> None:
        DEADLINES.end(conn.info.pop("orbit_deadline", None))

    @event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        conn = context.connection
        token = conn.info.pop("orbit_deadline", None) if conn is not None else None
        if DEADLINES.end(token):
            raise DeadlineExceeded(f"the database did not answer within {seconds:g}s") from (
                context.original_exception
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
        self._driver: psycopg.Connection[Any] | None = None
        self.socket = -1  # the connection's, for a deadline (app.deadlines); -1 before the first get
        self._pid = 0

    def get(self) -> Connection:
        if self._conn is not None and not self._usable():
            self.drop()
        if self._conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            driver = conn.connection.driver_connection
            if not isinstance(driver, psycopg.Connection):
                conn.close()
                raise TypeError("Orbit's connections are psycopg's")
            # Kept with it: reaching them through SQLAlchemy's proxies at every use cost 20 µs
            # of an enqueue on a process that had been idle (measured).
            self._conn, self._driver, self.socket = conn, driver, driver.fileno()
            self._pid = os.getpid()
        return self._conn

    def drop(self) -> None:
        """Close the connection (after an error, or to stop); the next ``get`` opens another."""
        conn, self._conn, self._driver, self.socket = self._conn, None, None, -1
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

    def _usable(self) -> bool:
        conn, driver = self._conn, self._driver
        if self._pid != os.getpid() or conn is None or driver is None or conn.invalidated or conn.closed:
            return False
        if driver.closed or driver.broken:
            return False
        readable, _, _ = select.select([self.socket], [], [], 0)
        if not readable:
            return True
        # Most likely the server's goodbye (or nothing at all: the connection is closed). Anything
        # else the server may send unasked (a parameter change, TLS housekeeping) passes a ping.
        try:
            driver.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True


# A migration script's own revision, and the line naming the one(s) it follows.
_REVISION = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*=(.*)$", re.M)


@cache
def _head_revision() -> str | None:
    """The newest migration: the one no other follows. Read from the scripts' text rather than
    through Alembic, whose import (70-80 ms) each worker's start paid for this check alone; a
    unit test holds it equal to Alembic's answer, which is used when the scripts have no single
    head."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise DatabaseError(f"Orbit's migrations are missing from {MIGRATIONS_DIR}: reinstall Orbit")
    revisions: set[str] = set()
    followed: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revisions.update(_REVISION.findall(source))
        for line in _DOWN_REVISION.findall(source):
            followed.update(re.findall(r"[\"']([^\"']+)[\"']", line))
    heads = revisions - followed
    if len(heads) == 1:
        return heads.pop()
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def alembic_config(url: str) -> Config:
    """Alembic's configuration for ``url``, built here: an installed Orbit has no alembic.ini
    (a checkout keeps one for ``alembic upgrade head``)."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise DatabaseError(f"Orbit's migrations are missing from {MIGRATIONS_DIR}: reinstall Orbit")
    config = Config()
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
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The schema's revision, read as Alembic keeps it (its table alembic_version), without
    importing Alembic; None before the first migration."""
    from sqlalchemy import text

    with engine.connect() as conn:
        if conn.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
            return None
        return conn.execute(text("SELECT max(version_num) FROM alembic_version")).scalar()


def check_schema(engine: Engine) -> None:
    """Refuse to work against a schema that is behind this code."""
    current, head = current_revision(engine), _head_revision()
    if current != head:
        raise DatabaseError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: run `orbit migrate`"
        )


def resolve_or_fail(settings: Settings) -> Database:
    """:func:`resolve`, or DatabaseError in one line when the embedded server cannot start."""
    try:
        return resolve(settings)
    except Exception as exc:
        raise DatabaseError(f"cannot start the embedded database: {one_line(exc)}") from None


def connect(settings: Settings) -> Database:
    """The database the settings name, reachable and at the schema this code needs (the embedded
    server is started and migrated first); DatabaseError, in one line, when it is not."""
    import structlog

    database = resolve_or_fail(settings)
    structlog.get_logger("orbit.database").info(
        "Using database", url=database.masked, embedded=database.embedded
    )
    if database.embedded:
        migrate(database.direct_url)
    engine = database.engine(pool_size=1)
    try:
        check_schema(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot reach the database {database.masked}: {one_line(exc)}") from None
    finally:
        engine.dispose()
    return database


def migration_url() -> str:
    """The URL migrations use when Alembic is run directly: DIRECT_URL, DATABASE_URL or embedded."""
    from alembic import context

    passed = context.config.attributes.get("url")
    if passed:
        return str(passed)
    from app.settings import load_settings_or_exit

    return resolve(load_settings_or_exit()).direct_url
