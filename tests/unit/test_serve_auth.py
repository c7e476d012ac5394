"""orbit serve's request checks that need no database: the write limit, origins, roles, the
answer cache, loopback addresses and one-line validation errors."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from app.access import Role
from app.serve.app import validation_message
from app.serve.auth import Caller, RateLimit, _Cache, check_origin, require
from app.serve.command import is_loopback


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(method: str = "POST", **headers: str) -> Request:
    raw = [
        (k.replace("_", "-").lower().encode(), v.encode())
        for k, v in {"host": "127.0.0.1:8080", **headers}.items()
    ]
    return Request({"type": "http", "method": method, "headers": raw, "path": "/", "query_string": b""})


def test_the_write_limit_allows_a_minutes_worth_then_refills_over_time() -> None:
    """A caller may write the per-minute rate at once; past it, the wait is said, and the bucket
    refills at the rate; each caller has a bucket of its own."""
    clock = Clock()
    limit = RateLimit(60, clock)
    assert all(limit.take("a") == 0 for _ in range(60))
    assert limit.take("a") == pytest.approx(1.0)
    assert limit.take("b") == 0
    clock.now += 2.0
    assert limit.take("a") == 0 and limit.take("a") == 0
    assert limit.take("a") > 0


def test_cached_answers_expire() -> None:
    """An answer is reused for CACHE_SECONDS, then fetched again."""
    clock, calls = Clock(), []
    cache = _Cache(clock)

    def fetch() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("k", fetch) == 1 and cache.get("k", fetch) == 1
    clock.now += 10
    assert cache.get("k", fetch) == 2


SESSION = Caller("alice", Role.OPERATOR, "session", "csrf-secret")


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"x_csrf_token": "csrf-secret", "origin": "http://127.0.0.1:8080"}, True),
        ({"x_csrf_token": "csrf-secret"}, True),
        ({}, False),
        ({"x_csrf_token": "wrong"}, False),
        ({"x_csrf_token": "csrf-secret", "origin": "http://evil.example"}, False),
        ({"x_csrf_token": "csrf-secret", "sec_fetch_site": "cross-site"}, False),
    ],
)
def test_a_sessions_writes_need_its_csrf_token_and_the_consoles_origin(
    headers: dict[str, str], allowed: bool
) -> None:
    """A cookie-borne write is refused (403) without the session's CSRF token or from another origin."""
    if allowed:
        check_origin(request(**headers), SESSION)
    else:
        with pytest.raises(HTTPException) as refused:
            check_origin(request(**headers), SESSION)
        assert refused.value.status_code == 403


def test_bearer_calls_and_reads_are_not_origin_checked() -> None:
    """A bearer token is not sent by a browser on its own; a GET changes nothing."""
    check_origin(request(origin="http://elsewhere"), Caller("ci", Role.OPERATOR, "token"))
    check_origin(request("GET", origin="http://elsewhere"), SESSION)


def test_open_mode_writes_from_another_origin_are_refused() -> None:
    """Without tokens, a page elsewhere cannot make the operator's browser write."""
    with pytest.raises(HTTPException):
        check_origin(request(origin="http://evil.example"), Caller("anonymous", Role.ADMIN, "open"))


def test_a_role_too_low_is_a_403_naming_the_role_needed() -> None:
    """require() says what the action needs and what the token is."""
    require(SESSION, Role.VIEWER, "reading")
    with pytest.raises(HTTPException) as refused:
        require(SESSION, Role.ADMIN, "flushing")
    assert refused.value.status_code == 403
    assert "flushing needs the admin role" in str(refused.value.detail)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.5", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    """Open mode may bind these only."""
    assert is_loopback(host) is loopback


def test_validation_errors_are_one_line_naming_the_field() -> None:
    """The first problem, where it is, and how many more."""
    errors: list[dict[str, Any]] = [
        {"loc": ("body", "priority"), "msg": "Input should be a valid integer"},
        {"loc": ("body", "delay"), "msg": "bad"},
    ]
    assert validation_message(errors) == "priority: Input should be a valid integer (and 1 more problem)"
    assert validation_message([]) == "request: invalid"
