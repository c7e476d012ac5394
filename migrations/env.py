"""Alembic environment: the URL comes from Orbit's settings, or from a connection passed in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from app.database import migration_url

# What a migration creates belongs to the role that runs it. A member of orbit_migrator (see
# deploy/roles.sql) runs migrations as that role, so that every other member can alter what it
# made; a superuser runs them as itself (deploy/roles.sql, run after them, hands them over).
_MIGRATOR = text("""
    SELECT r.rolname FROM pg_roles r
    WHERE r.rolname = 'orbit_migrator' AND pg_has_role(current_user, r.oid, 'MEMBER')
      AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
""")


def _as_migrator(conn: Connection) -> None:
    if conn.execute(_MIGRATOR).scalar() is not None:
        conn.exec_driver_sql("SET ROLE orbit_migrator")


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _as_migrator(connection)
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from sqlalchemy import create_engine

    engine = create_engine(migration_url())
    with engine.connect() as conn:
        _as_migrator(conn)
        conn.commit()  # the role stays for the session; the migrations begin their own transactions
        context.configure(connection=conn, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
