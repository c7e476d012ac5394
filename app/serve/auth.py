"""Who is calling: a bearer token, a console session, or nobody (open mode), and what they may do.

Every request is resolved to a :class:`Caller` once. Tokens and sessions are looked up by the hash
of their secret; answers are kept for ``CACHE_SECONDS`` so an API call costs no extra round trip
in the common case (a revoked token is refused within that time, by every serve process).

Open mode: while no token exists, every caller is an admin, but only on a loopback address (the
command refuses another), and only for requests whose Host is a loopback name, so a web page the
operator visits cannot reach the server by DNS rebinding. Unsafe requests from a browser must come
from the console's own origin; a console session's must also carry its CSRF token.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import HTTPException, Request
from sqlalchemy import Engine

from app import queries
from app.access import Role, digest

log = structlog.get_logger("orbit.serve")

CACHE_SECONDS = 5.0
SESSION_COOKIE = "orbit_session"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_KEPT = object()  # the cache has no answer, and was told not to ask the database


@dataclass(frozen=True)
class Caller:
    """Who made a request: a token's name and role; ``csrf`` is set for console sessions."""

    name: str
    role: Role
    via: str  # "token", "session" or "open"
    csrf: str | None = None


class _Cache:
    """Answers by key, each kept ``CACHE_SECONDS``; small, and shared by the request threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, fetch: Callable[[], Any] | None) -> Any:
        """The answer for ``key``, fetched when it is not kept; without ``fetch``, NOT_KEPT."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        if fetch is None:
            return NOT_KEPT
        value = fetch()
        with self._lock:
            if len(self._entries) > 10_000:  # a flood of bad secrets must not grow it for ever
                self._entries.clear()
            self._entries[key] = (now + CACHE_SECONDS, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Authenticator:
    """Resolves requests to callers against the database's tokens and sessions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache = _Cache()

    def forget(self) -> None:
        """Drop cached answers (after this process created or revoked a token or a session)."""
        self._cache.clear()

    def open_mode(self) -> bool:
        """True while no token exists: nobody needs to sign in."""
        return not self._cache.get("any-token", self._any_token)

    def caller(self, request: Request, *, lookup: bool = True) -> Caller | None:
        """The request's caller; HTTPException 401 when it proves nothing and tokens exist.
        Without ``lookup``, only from kept answers: None when the database would be asked."""
        secret = _bearer(request)
        if secret is not None:
            found = self._cache.get("t:" + digest(secret), (lambda: self._token(secret)) if lookup else None)
            if found is NOT_KEPT:
                return None
            if found is None:
                raise HTTPException(401, "the bearer token is not valid (revoked, or never created)")
            return Caller(found[0], Role.parse(found[1]), "token")
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            found = self._cache.get(
                "s:" + digest(session_id), (lambda: self._session(session_id)) if lookup else None
            )
            if found is NOT_KEPT:
                return None
            if found is not None:
                return Caller(found[0], Role.parse(found[1]), "session", found[2])
        any_token = self._cache.get("any-token", self._any_token if lookup else None)
        if any_token is NOT_KEPT:
            return None
        if not any_token:
            if _host(request) not in LOOPBACK_HOSTS:
                raise HTTPException(401, "open mode (no token exists) answers only on a loopback name")
            return Caller("anonymous", Role.ADMIN, "open")
        raise HTTPException(401, "sign in: send Authorization: Bearer <token> (see orbit token create)")

    def _any_token(self) -> bool:
        with self._engine.connect() as conn:
            return queries.any_token(conn)

    def _token(self, secret: str) -> tuple[str, str] | None:
        with self._engine.begin() as conn:
            row = queries.token_by_hash(conn, digest(secret))
        return None if row is None else (row.name, row.role)

    def _session(self, session_id: str) -> tuple[str, str, str] | None:
        with self._engine.connect() as conn:
            row = queries.session(conn, digest(session_id))
        return None if row is None else (row.name, row.role, row.csrf)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPException(401, "the Authorization header must be: Bearer <token>")
    return secret.strip()


def _host(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_origin(request: Request, caller: Caller) -> None:
    """An unsafe request a browser sends on its own (a session's, or in open mode) comes from the
    console itself: the Origin, when sent, names this server; a session's carries its CSRF token."""
    if request.method not in UNSAFE_METHODS or caller.via == "token":
        return
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise HTTPException(403, f"cross-origin request refused (Origin {origin!r:.80})")
    if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        raise HTTPException(403, "cross-site request refused")
    if caller.csrf is not None:
        sent = request.headers.get(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent.encode(), caller.csrf.encode()):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")


def require(caller: Caller, role: Role, action: str) -> None:
    if caller.role < role:
        raise HTTPException(403, f"{action} needs the {role} role; token {caller.name!r} is {caller.role}")


class RateLimit:
    """Writes per caller per minute, as a token bucket refilled continuously (per process)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, cost: float = 1.0) -> float:
        """0 when allowed; else the seconds to wait before this many writes are allowed."""
        now = self._clock()
        with self._lock:
            level, at = self._buckets.get(name, (self._burst, now))
            level = min(self._burst, level + (now - at) * self._rate)
            if level < cost:
                self._buckets[name] = (level, now)
                return (cost - level) / self._rate
            self._buckets[name] = (level - cost, now)
            return 0.0
