"""The run lifecycle's rules on their own: the retry rule, how an attempt's end becomes a
transition (app.outcomes), the retry backoff, and the state sets the SQL is built from."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from app.outcomes import Backoff, Failure, release, transition_for
from app.queries import ClaimedRun
from app.states import (
    FINAL_OUTCOMES,
    FINISHED,
    LIVE,
    RESUMABLE,
    ErrorKind,
    RunStatus,
    ordered,
    retries,
    sql_list,
)

BACKOFF = Backoff(timedelta(seconds=2), timedelta(minutes=10))


def _run(attempt: int, max_attempts: int) -> ClaimedRun:
    return ClaimedRun(7, "test.noop", "{}", attempt, max_attempts, 60.0)


def _error(
    kind: ErrorKind = ErrorKind.ERROR, *, fail_now: bool = False, snooze: float | None = None
) -> Failure:
    return Failure(kind, "ValueError", "boom", fail_now=fail_now, snooze=snooze)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "expected"),
    [
        (1, 3, True),
        (2, 3, True),
        (3, 3, False),
        (4, 3, False),
        (1, 1, False),
        (0, None, True),
        (1, None, False),
    ],
)
def test_a_run_is_retried_while_it_has_attempts_left(
    attempt: int, max_attempts: int | None, expected: bool
) -> None:
    """max_attempts counts the first attempt; a run without one yet has a single attempt."""
    assert retries(attempt, max_attempts) is expected


def test_an_error_with_attempts_left_goes_back_to_pending_after_the_backoff() -> None:
    """The run is pending again with the attempt counted, its error recorded, after a delay."""
    t = transition_for(_run(1, 3), _error(), BACKOFF)
    assert (t.id, t.attempt, t.status, t.refund) == (7, 1, RunStatus.PENDING, False)
    assert 1.0 <= t.delay <= 2.0  # attempt 1 waits the base, with equal jitter
    assert t.error == "ValueError: boom"
    assert t.entry is not None and (t.entry["attempt"], t.entry["kind"]) == (1, "error")


def test_an_error_on_the_last_attempt_fails_the_run() -> None:
    """No attempt left: failed, with the error, and no delay."""
    t = transition_for(_run(3, 3), _error(), BACKOFF)
    assert (t.status, t.delay, t.error) == (RunStatus.FAILED, 0.0, "ValueError: boom")


def test_a_time_limit_retries_and_then_times_the_run_out() -> None:
    """A timeout is retried like an error; on the last attempt the run ends timed_out."""
    timeout = _error(ErrorKind.TIMEOUT)
    assert transition_for(_run(1, 2), timeout, BACKOFF).status == RunStatus.PENDING
    last = transition_for(_run(2, 2), timeout, BACKOFF)
    assert (last.status, last.error) == (RunStatus.TIMED_OUT, "timed out: boom")


def test_fail_now_fails_the_run_with_attempts_left() -> None:
    """FailNow (and invalid input) ends the run at once, whatever attempts remain."""
    assert transition_for(_run(1, 5), _error(fail_now=True), BACKOFF).status == RunStatus.FAILED


def test_a_snooze_gives_the_attempt_back_even_on_the_last_attempt() -> None:
    """Snoozed: pending after the asked delay, the attempt refunded, no error recorded."""
    t = transition_for(_run(3, 3), _error(snooze=90.0), BACKOFF)
    assert (t.status, t.delay, t.refund, t.error, t.entry) == (RunStatus.PENDING, 90.0, True, None, None)


def test_a_released_run_is_pending_at_once_with_its_attempt_refunded() -> None:
    """Shutdown gives a run back untouched."""
    t = release(_run(2, 3))
    assert (t.status, t.delay, t.refund, t.error) == (RunStatus.PENDING, 0.0, True, None)


def test_the_backoff_doubles_per_attempt_within_equal_jitter_up_to_the_cap() -> None:
    """Attempt n waits between half and all of base * 2^(n-1), never more than the cap."""
    rng = random.Random(3)
    for attempt, full in [(1, 2.0), (2, 4.0), (3, 8.0), (9, 512.0), (10, 600.0), (40, 600.0)]:
        for _ in range(20):
            assert full / 2 <= BACKOFF.delay(attempt, rng) <= full


def test_the_backoff_of_attempt_zero_is_the_base() -> None:
    """A refunded first attempt (number 0) never gets a delay below half the base."""
    assert 1.0 <= BACKOFF.delay(0, random.Random(1)) <= 2.0


def test_every_state_is_live_or_finished_and_the_sql_lists_follow_the_enum() -> None:
    """The sets partition the states; the SQL lists are built from them in the lifecycle's order."""
    assert set(RunStatus) == LIVE | FINISHED and not LIVE & FINISHED
    assert RESUMABLE <= FINAL_OUTCOMES < FINISHED
    assert ordered(FINISHED) == (
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.TIMED_OUT,
        RunStatus.CANCELLED,
    )
    assert sql_list(LIVE) == "('pending', 'running')"
    assert sql_list(RESUMABLE) == "('failed', 'timed_out')"
