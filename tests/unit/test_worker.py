"""The worker's parts that need no database: the stop request and its deadlines (app.worker.shutdown),
and when a periodic duty is due (app.worker.duties.Every). Times are given, never read from a clock."""

from __future__ import annotations

import math

from app.worker.duties import Every
from app.worker.shutdown import Shutdown


def test_no_stop_requested_leaves_every_deadline_open() -> None:
    """Before any signal the grace never ends and outcomes may be written for ever."""
    shutdown = Shutdown(grace=5.0, write_timeout=10.0)
    assert not shutdown.requested
    assert not shutdown.grace_over(1e9)
    assert shutdown.remaining(100.0) == math.inf
    assert shutdown.writes_until == math.inf


def test_the_first_request_starts_a_graceful_stop() -> None:
    """The grace counts from the request; outcomes may be written for the write timeout after it."""
    shutdown = Shutdown(grace=5.0, write_timeout=10.0)
    assert shutdown.request(100.0) is True
    assert shutdown.requested
    assert shutdown.remaining(101.0) == 4.0
    assert not shutdown.grace_over(104.9)
    assert shutdown.grace_over(105.0)
    assert shutdown.remaining(200.0) == 0.0
    assert shutdown.writes_until == 115.0


def test_a_second_request_ends_the_grace_and_the_writing_at_once() -> None:
    """The second signal moves both deadlines to now: one last try at writing, then the rest is saved."""
    shutdown = Shutdown(grace=5.0, write_timeout=10.0)
    shutdown.request(100.0)
    assert shutdown.request(102.0) is False
    assert shutdown.grace_over(102.0)
    assert shutdown.remaining(102.0) == 0.0
    assert shutdown.writes_until == 102.0
    assert shutdown.request(103.0) is False  # a third changes nothing but the time
    assert shutdown.writes_until == 103.0


def test_a_duty_is_due_at_its_first_time_then_every_interval() -> None:
    """ready() is True once per interval, counted from when it was last ready."""
    every = Every(interval=10.0, due=5.0)
    assert not every.ready(4.0)
    assert every.remaining(4.0) == 1.0
    assert every.ready(5.0)
    assert not every.ready(14.9)
    assert every.remaining(14.0) == 1.0
    assert every.ready(17.0)  # late: the next one is an interval from now, not from 15
    assert every.remaining(17.0) == 10.0
    assert every.remaining(30.0) == 0.0


def test_a_duty_with_a_zero_interval_is_never_due() -> None:
    """An interval of 0 turns the duty off (RECOVERY_INTERVAL=0, say)."""
    every = Every(interval=0.0)
    assert not every.ready(0.0)
    assert not every.ready(1e9)
    assert every.remaining(0.0) == math.inf
