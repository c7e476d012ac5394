"""Which worker takes a new run first (app.worker.wakeup): one chosen by the run's id among the
live workers serving its pipeline; everyone for several runs or a notification that says nothing."""

from __future__ import annotations

import pytest

from app.worker.wakeup import Decision, Wakeup, passed_on


def _fleet(me: str) -> Wakeup:
    wakeup = Wakeup(me, frozenset({"a.one", "b.two"}))
    wakeup.update([("w1", ["a.one", "b.two"]), ("w2", ["a.one"]), ("w3", ["c.three"])])
    return wakeup


@pytest.mark.parametrize(("run_id", "chosen"), [(10, "w1"), (11, "w2"), (12, "w1")])
def test_a_single_run_is_for_one_worker_serving_its_pipeline(run_id: int, chosen: str) -> None:
    """The id modulo the workers serving it, in the order of their ids; w3 does not serve a.one."""
    for me in ("w1", "w2"):
        expected = Decision.CHOSEN if me == chosen else Decision.NOT_MINE
        assert _fleet(me).decide(f"{run_id} 1 a.one") is expected


def test_a_pipeline_served_by_one_worker_is_always_its_own() -> None:
    assert _fleet("w1").decide("7 1 b.two") is Decision.CHOSEN


def test_a_run_of_a_pipeline_this_worker_does_not_serve_is_left_alone() -> None:
    assert _fleet("w1").decide("7 1 c.three") is Decision.NOT_MINE
    assert _fleet("w1").decide("7 500 c.three") is Decision.NOT_MINE


@pytest.mark.parametrize(
    "payload", ["7 2 a.one", "7 5000 ", "", "garbled", "1 x a.one", passed_on("11 1 a.one")]
)
def test_several_runs_or_a_notification_that_says_nothing_wake_every_worker(payload: str) -> None:
    """A batch, a room freed under a limit (empty), an older trigger's or a passed-on one."""
    assert _fleet("w1").decide(payload) is Decision.NOW
    assert _fleet("w2").decide(payload) is Decision.NOW


def test_a_worker_not_yet_among_the_live_ones_counts_itself_in() -> None:
    """Just started, before its first heartbeat read the fleet: it still takes its share."""
    newcomer = Wakeup("w0", frozenset({"a.one"}))
    newcomer.update([("w1", ["a.one"])])
    assert [newcomer.decide(f"{i} 1 a.one") for i in (2, 3)] == [Decision.CHOSEN, Decision.NOT_MINE]


def test_a_run_passed_on_keeps_its_pipeline() -> None:
    """Workers that do not serve it still stay asleep."""
    assert passed_on("11 1 a.one") == "* 1 a.one"
    other = Wakeup("w3", frozenset({"c.three"}))
    assert other.decide(passed_on("11 1 a.one")) is Decision.NOT_MINE
