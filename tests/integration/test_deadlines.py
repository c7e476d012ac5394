"""Client-side deadlines: a database that accepts bytes and never answers cannot hold a caller."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from subprocess import CompletedProcess

import psycopg
import pytest
from sqlalchemy import text

from app.database import libpq_url, make_engine
from app.deadlines import DEADLINES, DeadlineExceeded
from tests.support.proxy import FreezableProxy, proxy_for, url_through


@pytest.fixture
def proxy(direct_url: str) -> Iterator[FreezableProxy]:
    with proxy_for(direct_url) as proxy:
        yield proxy


def test_a_bounded_call_is_cut_at_its_deadline(proxy: FreezableProxy, direct_url: str) -> None:
    """A statement sent to a frozen connection fails soon after its deadline, as a deadline."""
    with psycopg.connect(libpq_url(url_through(proxy, direct_url)), autocommit=True) as conn:
        conn.execute("SELECT 1")
        proxy.freeze()
        started = time.monotonic()
        with (
            pytest.raises(DeadlineExceeded, match=r"did not answer within 0\.5s"),
            DEADLINES.bound(conn.fileno(), 0.5),
        ):
            conn.execute("SELECT 1")
        assert time.monotonic() - started < 5
        assert conn.broken


def test_a_call_that_answers_in_time_is_left_alone(direct_url: str) -> None:
    """The deadline changes nothing for a call that ends before it; the connection stays usable."""
    with psycopg.connect(libpq_url(direct_url), autocommit=True) as conn:
        with DEADLINES.bound(conn.fileno(), 0.2):
            conn.execute("SELECT 1")
        DEADLINES.cut_late(time.monotonic() + 1)  # nothing in flight: nothing to cut
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_an_engine_bounds_each_statement(proxy: FreezableProxy, direct_url: str) -> None:
    """With ``bounded``, every statement of an engine has the client deadline (timeout x 1.5)."""
    engine = make_engine(url_through(proxy, direct_url), timeout=0.5, bounded=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            proxy.freeze()
            with pytest.raises(DeadlineExceeded, match=r"did not answer within 1\.5s"):
                conn.execute(text("SELECT 1"))
    finally:
        proxy.thaw()
        engine.dispose()


def test_the_cli_gives_up_on_a_hanging_database_with_one_line(
    proxy: FreezableProxy, direct_url: str, orbit: Callable[..., CompletedProcess[str]]
) -> None:
    """`orbit` against a database that never answers: one line naming the problem, non-zero."""
    proxy.freeze()
    started = time.monotonic()
    done = orbit(
        "status", "1", env={"DATABASE_URL": url_through(proxy, direct_url), "STATEMENT_TIMEOUT": "1s"}
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orbit: cannot reach the database"), done.stderr
