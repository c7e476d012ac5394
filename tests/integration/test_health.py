"""Fleet health: the guide's alert rules over the runs and workers tables, and `orbit health`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from app import health, queries
from app.database import make_engine
from app.health import Status
from app.limits import limits
from app.settings import Settings
from tests.support.runs import finished_run, pending_run, running_run, worker_row


def _check(engine: Engine, settings: Settings) -> health.Health:
    result = health.check(engine, settings)
    assert result.status == max((p.status for p in result.problems), default=Status.HEALTHY)
    return result


def test_a_quiet_fleet_is_healthy(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    """Successful runs, a live worker and nothing waiting: healthy, with the last activity."""
    worker_row(engine, "w1")
    for _ in range(3):
        finished_run(engine, "test.noop", "succeeded", ago=30)
    result = _check(engine, make_settings())
    assert (result.status, result.stuck_runs, result.message) == (Status.HEALTHY, 0, "all checks pass")
    assert result.last_activity is not None


def test_failure_rate_over_the_threshold_in_the_window_warns(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """1 failure in 11 runs (9%) within 5 minutes warns at 5%; old failures and a 10% limit do not."""
    worker_row(engine, "w1")
    for _ in range(10):
        finished_run(engine, "test.noop", "succeeded", ago=60)
    finished_run(engine, "test.fail", "failed", ago=60)
    for _ in range(5):
        finished_run(engine, "test.fail", "timed_out", ago=600)  # outside the 5-minute window
    result = _check(engine, make_settings())
    assert result.status == Status.WARNING
    assert "failure rate 9.1%" in result.message
    assert _check(engine, make_settings(HEALTH_FAILURE_RATE=10)).status == Status.HEALTHY


def test_a_backlog_that_has_waited_too_long_warns(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """More than HEALTH_BACKLOG runs due for over HEALTH_BACKLOG_FOR warn; a fresh burst does not."""
    worker_row(engine, "w1")
    for _ in range(4):
        pending_run(engine, "test.noop", due_ago=5)
    settings = make_settings(HEALTH_BACKLOG=3, HEALTH_BACKLOG_FOR="1m")
    assert _check(engine, settings).status == Status.HEALTHY
    for _ in range(4):
        pending_run(engine, "test.noop", due_ago=120)
    result = _check(engine, settings)
    assert result.status == Status.WARNING
    assert "4 runs have waited over 1m" in result.message
    assert "8 pending in all" in result.message


def test_a_backlog_a_limit_holds_is_said_apart_and_does_not_warn(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """Runs of a pipeline at its fleet-wide cap wait by design: health counts them apart
    (waitingOnLimits), and warns only about the runs no limit holds."""
    worker_row(engine, "w1")
    with engine.begin() as conn:  # the cap as a live worker registers its code's limits
        conn.execute(
            text("UPDATE workers SET limits = CAST(:limits AS jsonb) WHERE id = 'w1'"),
            {"limits": json.dumps({"test.noop": limits(concurrency=1).as_claim()})},
        )
    running_run(engine, "test.noop", "w1")
    for _ in range(5):
        pending_run(engine, "test.noop", due_ago=120)
    settings = make_settings(HEALTH_BACKLOG=3, HEALTH_BACKLOG_FOR="1m")
    held = _check(engine, settings)
    assert held.status == Status.HEALTHY, held.message
    assert held.as_json()["waitingOnLimits"] == 5
    with engine.begin() as conn:  # an override raises the cap: now nothing holds them
        queries.set_limit(conn, "test.*", "test.%", limits(concurrency=10).as_claim(), "tester")
    loose = _check(engine, settings)
    assert loose.status == Status.WARNING
    assert "5 runs have waited over 1m" in loose.message
    assert loose.as_json()["waitingOnLimits"] == 0


def test_a_backlog_held_by_a_rate_is_said_apart_until_its_window_passes(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    worker_row(engine, "w1")
    with engine.begin() as conn:  # 2 an hour, both started 10 minutes ago in one claim
        conn.execute(
            text("UPDATE workers SET limits = CAST(:limits AS jsonb) WHERE id = 'w1'"),
            {"limits": json.dumps({"test.noop": limits(rate="2/h").as_claim()})},
        )
        conn.execute(
            text("""INSERT INTO run_starts (pipeline, started_at, starts, total)
                    VALUES ('test.noop', now() - interval '70 minutes', 5, 5),
                           ('test.noop', now() - interval '10 minutes', 2, 7)""")
        )
    for _ in range(3):
        pending_run(engine, "test.noop", due_ago=120)
    settings = make_settings(HEALTH_BACKLOG=2, HEALTH_BACKLOG_FOR="1m")
    assert _check(engine, settings).as_json()["waitingOnLimits"] == 3
    with engine.begin() as conn:
        conn.execute(text("UPDATE run_starts SET started_at = started_at - interval '1 hour'"))
    assert _check(engine, settings).as_json()["waitingOnLimits"] == 0


def test_runs_no_live_worker_can_run_warn(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    """Runs waiting past HEALTH_BACKLOG_FOR for a pipeline that no live worker loads warn, by name;
    a pipeline only a silent or stopped worker runs counts as unserved, a paused one does not."""
    worker_row(engine, "w1", pipelines=["etl.load"])
    worker_row(engine, "silent", heartbeat_ago=3600, pipelines=["etl.extract"])
    worker_row(engine, "gone", heartbeat_ago=3600, stopped=True, pipelines=["etl.typo"])
    settings = make_settings(HEALTH_BACKLOG_FOR="1m")
    pending_run(engine, "etl.load", due_ago=3600)
    pending_run(engine, "etl.new", due_ago=5)  # not waited long yet: a deploy may be rolling out
    assert [p.message for p in _check(engine, settings).problems] == ["no heartbeat from worker(s): silent"]
    for pipeline in ("etl.typo", "etl.extract", "etl.paused", "etl.typo"):
        pending_run(engine, pipeline, due_ago=120)
    with engine.begin() as conn:
        queries.pause(conn, "etl.paused", "etl.paused", "test")
    result = _check(engine, settings)
    assert result.status == Status.WARNING
    assert [p.message for p in result.problems] == [
        "no heartbeat from worker(s): silent",
        "runs have waited over 1m for pipeline(s) no live worker runs: etl.extract, etl.typo",
    ]


def test_slow_runs_warn_on_average_duration(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    """An average duration above HEALTH_AVG_DURATION (60 s by default) warns."""
    worker_row(engine, "w1")
    finished_run(engine, "test.noop", "succeeded", duration=90)
    finished_run(engine, "test.noop", "succeeded", duration=50)
    result = _check(engine, make_settings())
    assert result.status == Status.WARNING
    assert "average duration 70.0s" in result.message


def test_a_silent_worker_warns_and_no_live_worker_with_work_is_an_error(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """A registered worker without a heartbeat warns; pending work and no live worker is an error."""
    worker_row(engine, "alive")
    worker_row(engine, "silent", heartbeat_ago=3600)
    worker_row(engine, "stopped-cleanly", heartbeat_ago=3600, stopped=True)
    result = _check(engine, make_settings())
    assert result.status == Status.WARNING
    assert result.message == "no heartbeat from worker(s): silent"
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM workers WHERE id = 'alive'")
    pending_run(engine, "test.noop")
    result = _check(engine, make_settings())
    assert result.status == Status.ERROR
    assert "1 runs pending and no live worker" in result.message


def test_stuck_runs_are_counted(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    """A running run whose heartbeat stopped is stuck; one with a fresh heartbeat is not."""
    worker_row(engine, "w1")
    running_run(engine, "test.sleep", "w1")
    running_run(engine, "test.sleep", "w1", heartbeat_ago=3600)
    result = _check(engine, make_settings())
    assert (result.status, result.stuck_runs) == (Status.WARNING, 1)
    assert result.as_json()["stuckRuns"] == 1


def test_an_unreachable_database_is_an_error(make_settings: Callable[..., Settings]) -> None:
    """No database: status error, and the password of the URL is not in the message."""
    unreachable = make_engine("postgresql+psycopg://orbit:hunter2@127.0.0.1:1/orbit", pool_size=1)
    try:
        result = health.check(unreachable, make_settings())
    finally:
        unreachable.dispose()
    assert result.status == Status.ERROR
    assert result.message.startswith("database unreachable")
    assert "hunter2" not in json.dumps(result.as_json())


# The test environment's 200 ms heartbeat would make the worker rows silent before the CLI starts.
PATIENT = {"STALE_AFTER": "1m"}


def test_orbit_health_exit_codes(engine: Engine, orbit: Callable[..., Any]) -> None:
    """`orbit health` exits 0 healthy, 1 warning, 2 error; --json gives the guide's shape."""
    worker_row(engine, "w1")
    healthy = orbit("health", "--json", env=PATIENT)
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["status"] == "healthy"

    running_run(engine, "test.sleep", "w1", heartbeat_ago=3600)
    warning = orbit("health", env=PATIENT)
    assert warning.returncode == 1
    assert warning.stdout.startswith("warning: 1 stuck run(s)")

    down = orbit("health", "--json", env={"DATABASE_URL": "postgresql://orbit:hunter2@127.0.0.1:1/orbit"})
    assert down.returncode == 2
    body = json.loads(down.stdout)
    assert set(body) >= {"status", "message", "lastActivity", "stuckRuns"}
    assert body["status"] == "error"
    assert "hunter2" not in down.stdout + down.stderr


def test_health_thresholds_are_settings(engine: Engine, orbit: Callable[..., Any]) -> None:
    """HEALTH_AVG_DURATION from the environment changes the verdict of `orbit health`."""
    worker_row(engine, "w1")
    finished_run(engine, "test.noop", "succeeded", duration=5)
    assert orbit("health", env=PATIENT).returncode == 0
    assert orbit("health", env={**PATIENT, "HEALTH_AVG_DURATION": "2s"}).returncode == 1
