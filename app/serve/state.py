"""What one serve process holds: settings, the engine, the authenticator, the write limit, the
live-event broadcaster and the pipelines it knows. Handlers reach it through :func:`caller`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import HTTPException, Request
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

from app import registry
from app.access import Role
from app.database import client_deadline
from app.serve.auth import Authenticator, Caller, RateLimit, check_origin, require
from app.serve.events import Broadcaster, Changes
from app.serve.inserter import Inserter
from app.settings import Settings

audit_log = structlog.get_logger("orbit.audit")


@dataclass
class Server:
    settings: Settings
    engine: Engine
    known: dict[str, registry.Pipeline]
    auth: Authenticator = field(init=False)
    writes: RateLimit = field(init=False)
    events: Broadcaster = field(init=False)
    inserter: Inserter = field(init=False)

    def __post_init__(self) -> None:
        self.inserter = Inserter(
            self.engine, client_deadline(self.settings.statement_timeout.total_seconds())
        )
        self.auth = Authenticator(self.engine)
        self.writes = RateLimit(self.settings.SERVE_WRITE_RATE)
        interval = self.settings.SERVE_EVENTS_INTERVAL.total_seconds()
        self.events = Broadcaster(Changes(self.engine).read_once, interval)

    def close(self) -> None:
        self.inserter.close()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn


def server(request: Request) -> Server:
    return request.app.state.orbit  # type: ignore[no-any-return]


def caller(role: Role, action: str) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency: the request's caller, who must have ``role``; writes are rate-limited and
    must come from the console's origin when a browser sends them."""

    async def resolve(request: Request) -> Caller:
        # Async, so a request whose caller is in the cache (nearly all) costs no thread hand-off.
        orbit = server(request)
        who = orbit.auth.caller(request, lookup=False)
        if who is None:
            who = await run_in_threadpool(orbit.auth.caller, request)
        assert who is not None
        require(who, role, action)
        check_origin(request, who)
        if request.method != "GET":
            wait = orbit.writes.take(who.name)
            if wait:
                raise HTTPException(
                    429,
                    f"too many writes by {who.name!r}: at most {orbit.settings.SERVE_WRITE_RATE} a minute",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
        request.state.caller = who
        return who

    return resolve


def audit(who: Caller, action: str, **details: Any) -> None:
    """Every write through the API or the console is logged with the token that made it."""
    audit_log.info("Write", token=who.name, via=who.via, action=action, **details)
