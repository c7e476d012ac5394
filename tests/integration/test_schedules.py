"""Schedules: due slots, one run per slot across passes and leaders, no backfill unless asked."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from app import registry
from app.schedules import Scheduler
from app.settings import Settings
from app.states import RunStatus
from tests.support.workers import run_burst

Orbit = Callable[..., subprocess.CompletedProcess[str]]
DAILY = registry.get("test.daily")  # 0 6 * * * UTC
BACKFILL = registry.get("test.daily_backfill")  # 30 6 * * * Europe/Paris, backfill


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
