"""API tokens and console sessions (see app.access): only hashes of secrets are ever stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, text

_CREATE_TOKEN = text("""
    INSERT INTO api_tokens (name, role, secret_hash, created_by) VALUES (:name, :role, :hash, :by)
    ON CONFLICT (name) DO NOTHING
    RETURNING name
""")
_LIST_TOKENS = text("""
    SELECT t.name, t.role, t.created_at, t.created_by, t.last_used_at,
           (SELECT count(*) FROM console_sessions s WHERE s.token_name = t.name AND s.expires_at > now())
           AS sessions
    FROM api_tokens t ORDER BY t.name
""")
_REVOKE_TOKEN = text("DELETE FROM api_tokens WHERE name = :name RETURNING name")
_ANY_TOKEN = text("SELECT EXISTS (SELECT 1 FROM api_tokens)")
# Seen at most once a minute per token: a write per API call would double an enqueue's cost.
_TOKEN_BY_HASH = text("""
    UPDATE api_tokens SET last_used_at = now()
    WHERE secret_hash = :hash AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
    RETURNING name, role
""")
_TOKEN_BY_HASH_READ = text("SELECT name, role FROM api_tokens WHERE secret_hash = :hash")

_CREATE_SESSION = text("""
    INSERT INTO console_sessions (id_hash, token_name, csrf, expires_at)
    VALUES (:id_hash, :token_name, :csrf, now() + make_interval(hours => :hours))
""")
_SESSION = text("""
    SELECT s.token_name AS name, t.role, s.csrf FROM console_sessions s
    JOIN api_tokens t ON t.name = s.token_name
    WHERE s.id_hash = :id_hash AND s.expires_at > now()
""")
_END_SESSION = text("DELETE FROM console_sessions WHERE id_hash = :id_hash OR expires_at < now()")


def create_token(conn: Connection, name: str, role: str, secret_hash: str, created_by: str) -> bool:
    """False when a token of that name exists already."""
    values = {"name": name, "role": role, "hash": secret_hash, "by": created_by}
    return conn.execute(_CREATE_TOKEN, values).first() is not None


def list_tokens(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(_LIST_TOKENS))


def revoke_token(conn: Connection, name: str) -> bool:
    """Delete the token and its console sessions; False when there was none."""
    return conn.execute(_REVOKE_TOKEN, {"name": name}).first() is not None


def any_token(conn: Connection) -> bool:
    return bool(conn.execute(_ANY_TOKEN).scalar())


def token_by_hash(conn: Connection, secret_hash: str) -> Row[Any] | None:
    """The token (name, role) with this secret's hash, its last use noted; None when unknown."""
    row = conn.execute(_TOKEN_BY_HASH, {"hash": secret_hash}).first()
    return row if row is not None else conn.execute(_TOKEN_BY_HASH_READ, {"hash": secret_hash}).first()


def create_session(conn: Connection, id_hash: str, token_name: str, csrf: str, hours: int) -> None:
    values = {"id_hash": id_hash, "token_name": token_name, "csrf": csrf, "hours": hours}
    conn.execute(_CREATE_SESSION, values)


def session(conn: Connection, id_hash: str) -> Row[Any] | None:
    """The live session's token (name, role) and its CSRF secret."""
    return conn.execute(_SESSION, {"id_hash": id_hash}).first()


def end_session(conn: Connection, id_hash: str) -> None:
    """End this session, and sweep expired ones while at it."""
    conn.execute(_END_SESSION, {"id_hash": id_hash})
