"""Schedules: due slots, one run per slot across passes and leaders, no backfill unless asked."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app import registry
from app.registry import RegistryError
from app.schedules import MAX_BACKFILL, Scheduler, due_slots, next_slot
from app.settings import Settings
from app.states import RunStatus
from tests.support.workers import run_burst

Orbit = Callable[..., subprocess.CompletedProcess[str]]
DAILY = registry.get("test.daily")  # 0 6 * * * UTC
BACKFILL = registry.get("test.daily_backfill")  # 30 6 * * * Europe/Paris, backfill


def _utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def test_next_slot_follows_the_time_zone() -> None:
    assert next_slot(DAILY, _utc(23, 5)) == _utc(23, 6)
    assert next_slot(DAILY, _utc(23, 6)) == _utc(24, 6)
    # 06:30 in Paris is 05:30 UTC in November.
    assert next_slot(BACKFILL, _utc(23, 5)) == _utc(23, 5, 30)


def test_missed_slots_are_skipped_unless_the_pipeline_asks_for_backfill() -> None:
    last, now = _utc(20, 6), _utc(23, 7)
    assert due_slots(DAILY, last, now) == [_utc(23, 6)]
    assert due_slots(BACKFILL, _utc(20, 5, 30), now) == [_utc(d, 5, 30) for d in (21, 22, 23)]
    assert due_slots(DAILY, _utc(23, 6), now) == []


def test_a_frequent_schedule_after_a_long_outage_enqueues_only_the_latest_slot() -> None:
    """Without backfill, 3 days of missed minutes give the latest minute, not a stale one."""
    minutely = registry.Pipeline("test.minutely", lambda ctx, params: None, schedule="* * * * *")
    assert due_slots(minutely, _utc(20, 0), _utc(23, 7, 0) + timedelta(seconds=30)) == [_utc(23, 7)]
    assert due_slots(minutely, _utc(20, 0), _utc(23, 7)) == [_utc(23, 7)]  # a slot exactly on now
    assert due_slots(minutely, _utc(23, 7), _utc(23, 7)) == []
    # With backfill every slot runs, oldest first, at most MAX_BACKFILL per pass.
    catch_up = registry.Pipeline(
        "test.catch_up", lambda ctx, params: None, schedule="* * * * *", backfill=True
    )
    slots = due_slots(catch_up, _utc(20, 0), _utc(23, 7))
    assert len(slots) == MAX_BACKFILL
    assert slots[0] == _utc(20, 0, 1) and slots == sorted(slots)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "0 6 * *"}, "bad cron expression '0 6 * *'"),
        ({"schedule": "61 * * * *"}, "bad cron expression"),
        ({"schedule": "0 6 * * *", "schedule_tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_schedule_is_refused_at_registration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.pipeline("test.bad_schedule", **kwargs)


def _scheduler() -> Scheduler:
    return Scheduler.of([DAILY, BACKFILL, registry.get("test.noop")])


def _pass(engine: Engine) -> int | None:
    with engine.begin() as conn:
        return _scheduler().run_once(conn)


def _runs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT pipeline, run_at, key FROM runs ORDER BY run_at, pipeline")))


def _set_last_slot(engine: Engine, pipeline: str, days_ago: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE schedules SET last_slot = last_slot - make_interval(secs => :s) WHERE pipeline = :p"
            ),
            {"s": days_ago * 86_400, "p": pipeline},
        )


def test_a_new_schedule_starts_from_now_and_each_slot_is_enqueued_once(engine: Engine) -> None:
    assert _pass(engine) == 0
    assert _runs(engine) == []
    _set_last_slot(engine, "test.daily", 3)
    _set_last_slot(engine, "test.daily_backfill", 3)
    assert _pass(engine) == 1 + 3
    first = _runs(engine)
    assert [r.pipeline for r in first].count("test.daily") == 1
    assert [r.pipeline for r in first].count("test.daily_backfill") == 3
    assert all(r.key.startswith(f"schedule:{r.pipeline}:") for r in first)
    for _ in range(3):
        assert _pass(engine) == 0
    assert _runs(engine) == first


def test_concurrent_leaders_enqueue_each_slot_once(engine: Engine, database_url: str) -> None:
    _pass(engine)
    _set_last_slot(engine, "test.daily_backfill", 5)
    barrier = threading.Barrier(8)

    def leader() -> None:
        barrier.wait(timeout=30)
        _pass(engine)

    threads = [threading.Thread(target=leader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    runs = _runs(engine)
    assert len(runs) == 5
    assert len({r.run_at for r in runs}) == 5


def test_a_worker_enqueues_the_due_slot_and_runs_it(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """The worker's leader pass (every RECOVERY_INTERVAL) enqueues a due slot once; the run executes."""
    _pass(engine)
    _set_last_slot(engine, "test.daily", 2)
    for _ in range(2):  # the second worker is a restart: the slot, finished, is not enqueued again
        with engine.begin() as conn:
            # Something to run, so the burst worker turns its loop and makes its leader pass.
            conn.execute(text("INSERT INTO runs (pipeline) VALUES ('test.noop')"))
        run_burst(make_settings(RECOVERY_INTERVAL="10ms"))
    with engine.connect() as conn:
        slots = list(conn.execute(text("SELECT status, key FROM runs WHERE pipeline = 'test.daily'")))
        noops = conn.execute(text("SELECT count(*) FROM runs WHERE status = 'succeeded'")).scalar_one()
    assert noops == 3
    assert len(slots) == 1
    assert slots[0].status == RunStatus.SUCCEEDED
    assert slots[0].key.startswith("schedule:test.daily:")


def test_orbit_schedules_lists_next_fire_times(engine: Engine, orbit: Orbit) -> None:
    _pass(engine)
    result = orbit("schedules")
    assert result.returncode == 0, result.stderr
    assert "test.daily " in result.stdout and "0 6 * * *" in result.stdout
    assert "Europe/Paris" in result.stdout
    line = next(li for li in result.stdout.splitlines() if li.startswith("test.daily "))
    assert ":00:00" in line
