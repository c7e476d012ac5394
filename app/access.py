"""Who may call ``orbit serve``: API tokens, their roles, and the console's sessions.

A token is a name, a role and a secret. The secret is shown once, at creation, and only its
SHA-256 is stored (it is 32 random bytes: nothing to gain from a slow password hash). Roles are
ordered: each may do what the roles below it may.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from enum import IntEnum
from typing import Any

from sqlalchemy import Connection

from app import queries

# What the database's CHECK constraint on api_tokens.name allows.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
SECRET_PREFIX = "orbit_"
SESSION_HOURS = 12


class AccessError(ValueError):
    """A token cannot be created or used as asked; one line for the user."""


class Role(IntEnum):
    """viewer reads; operator also enqueues, cancels, retries, resumes, pauses and drains;
    admin also flushes, acts in bulk on more than BULK_LIMIT runs, and manages tokens."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(str(role) for role in cls)
            raise AccessError(f"role must be one of {names}, not {value!r}") from None


# An operator's bulk action touches at most this many runs; past it, it takes an admin.
BULK_LIMIT = 1000


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise AccessError(
            f"token name {name!r:.60}: 1 to 100 letters, digits, '_', '.', '@' or '-', starting "
            "with a letter or digit"
        )
    return name


def new_secret() -> str:
    """A secret that says what it is (``orbit_...``), for secret scanners and people alike."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What is stored of a secret (or of a session id)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


# --- in the database (the CLI's orbit token and the API's /api/tokens) ------------------------------


def create(conn: Connection, name: str, role: str, created_by: str) -> str:
    """Create the token ``name`` and return its secret, which is not kept anywhere."""
    check_name(name)
    secret = new_secret()
    if not queries.create_token(conn, name, str(Role.parse(role)), digest(secret), created_by):
        raise AccessError(f"a token named {name!r} exists already: revoke it first, or pick another name")
    return secret


def listed(conn: Connection) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in queries.list_tokens(conn)]


def revoke(conn: Connection, name: str) -> None:
    """Delete the token and end its console sessions."""
    if not queries.revoke_token(conn, name):
        raise AccessError(f"no token named {name!r} (see orbit token list)")
