"""How far a worker claims ahead and when it writes outcomes (app.batching, driven with given times)."""

from __future__ import annotations

from app.batching import Durations, FlushPolicy, Pace


def test_nothing_is_claimed_ahead_before_the_pace_is_known() -> None:
    """A worker that has finished nothing yet claims only its free slots."""
    assert Pace(concurrency=4).ahead(now=100.0) == 0


def test_quick_runs_are_claimed_ahead_up_to_a_window_of_work() -> None:
    """Runs finished in the last window, capped, are claimed ahead of the free slots."""
    pace = Pace(concurrency=4, window=0.05, cap=100)
    for i in range(30):
        pace.finished(100.0 + i * 0.001)
    assert pace.ahead(100.06) == 30
    for i in range(500):
        pace.finished(100.06 + i * 0.0001)
    assert pace.ahead(100.12) == 100


def test_slow_runs_are_never_claimed_ahead() -> None:
    """Fewer than ``concurrency`` runs a window (long runs) claim nothing ahead."""
    pace = Pace(concurrency=4, window=0.05)
    for i in range(3):
        pace.finished(100.0 + i * 0.01)
    assert pace.ahead(100.06) == 0


def test_the_pace_is_forgotten_after_a_quiet_spell() -> None:
    """After two windows without a finished run, nothing is claimed ahead."""
    pace = Pace(concurrency=1, window=0.05)
    for i in range(10):
        pace.finished(100.0 + i * 0.001)
    assert pace.ahead(100.06) == 10
    assert pace.ahead(100.2) == 0


def test_outcomes_are_written_when_full_old_or_idle() -> None:
    """A batch is due when it is full, when its oldest outcome waited the delay, or when idle."""
    policy = FlushPolicy(batch=10, delay=0.005)
    assert not policy.due(1.0, 0, idle=True)
    policy.added(1.0)
    assert not policy.due(1.001, 3, idle=False)
    assert policy.due(1.001, 3, idle=True)
    assert policy.due(1.001, 10, idle=False)
    assert policy.due(1.006, 3, idle=False)
    assert abs(policy.remaining(1.002) - 0.003) < 1e-9
    policy.written()
    assert not policy.due(2.0, 0, idle=True)


def test_a_pipeline_is_quick_once_its_runs_are_and_no_longer_after_long_ones() -> None:
    """Unknown: not quick (its first run may be long); a few 1 ms runs: quick; runs of a second
    pull the moving average past QUICK_RUN again."""
    durations = Durations()
    assert "p" not in durations.quick
    durations.ended("p", 0.001)
    assert "p" in durations.quick
    for _ in range(3):
        durations.ended("p", 1.0)
    assert "p" not in durations.quick
    for _ in range(30):
        durations.ended("p", 0.001)
    assert "p" in durations.quick
