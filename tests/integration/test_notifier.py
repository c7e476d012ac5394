"""The listening connection (app.notifier) as the worker's loop uses it: notifications read as
they arrive, in order, none lost to the connection's own statements, and a cut connection made
again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from multiprocessing.connection import wait

import psycopg
import pytest

from app.database import Database, libpq_url
from app.notifier import CHANNEL, Notifier
from tests.support.waiting import wait_until


@pytest.fixture
def notifier(direct_url: str) -> Iterator[tuple[Notifier, threading.Event]]:
    made = threading.Event()
    notifier = Notifier(Database(url=direct_url, direct_url=direct_url, embedded=False), made.set)
    notifier.start()
    try:
        yield notifier, made
    finally:
        notifier.stop()


def _adopted(notifier: Notifier, made: threading.Event) -> None:
    """Wait for the listener's connection and let the loop adopt it (an empty payload says so)."""
    wait_until(made.is_set, 10, "the listener's connection")
    made.clear()
    assert notifier.take([]) == [""]


def _take(notifier: Notifier, count: int) -> list[str]:
    """What arrives, as the loop reads it: wait on the socket, then take; ``count`` payloads."""
    payloads: list[str] = []

    def arrived() -> bool:
        payloads.extend(notifier.take(wait(notifier.sockets(), 0.1)))
        return len(payloads) >= count

    wait_until(arrived, 10, f"{count} notifications")
    return payloads


def _notify(direct_url: str, *payloads: str) -> None:
    with psycopg.connect(libpq_url(direct_url), autocommit=True) as conn:
        for payload in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def test_notifications_are_read_in_order_as_they_arrive(
    notifier: tuple[Notifier, threading.Event], direct_url: str
) -> None:
    listener, made = notifier
    _adopted(listener, made)
    _notify(direct_url, "1 1 a.one", "2 1 b.two", "3 40 ünïcode.pipeline")
    assert _take(listener, 3) == ["1 1 a.one", "2 1 b.two", "3 40 ünïcode.pipeline"]
    assert listener.take([]) == []  # nothing twice


def test_a_notification_arriving_during_its_own_statement_is_kept(
    notifier: tuple[Notifier, threading.Event],
) -> None:
    """A run passed on goes out on the listening connection, and comes back to it while the
    statement runs: psycopg reads it then, and it must reach the loop all the same."""
    listener, made = notifier
    _adopted(listener, made)
    listener.send("* 1 a.one")
    assert listener.take([]) == ["* 1 a.one"]


def test_a_cut_connection_is_made_again(notifier: tuple[Notifier, threading.Event], direct_url: str) -> None:
    listener, made = notifier
    _adopted(listener, made)
    with psycopg.connect(libpq_url(direct_url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE query LIKE %s AND datname = current_database() AND pid <> pg_backend_pid()",
            (f"LISTEN {CHANNEL}%",),
        )
    # The loop sees the socket readable, reads the server's goodbye, and the thread connects again.
    wait_until(
        lambda: not listener.take(wait(listener.sockets(), 0.1)) and not listener.sockets(), 10, "the drop"
    )
    _adopted(listener, made)
    _notify(direct_url, "4 1 a.one")
    assert _take(listener, 1) == ["4 1 a.one"]
