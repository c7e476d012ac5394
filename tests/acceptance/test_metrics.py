"""Prometheus metrics: a real worker scraped over HTTP, values checked against what it ran."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from app import enqueue
from app.states import RunStatus
from tests.support.http import answers, free_port, get, samples
from tests.support.runs import fetch_run, finished_run, running_run, worker_row
from tests.support.waiting import wait_until


def _enqueue(engine: Engine, pipeline: str, params: dict[str, Any] | None = None, **kw: Any) -> int:
    with engine.begin() as conn:
        return enqueue(pipeline, params or {}, connection=conn, **kw)


def _finished(engine: Engine, run_ids: list[int]) -> bool:
    live = (RunStatus.PENDING, RunStatus.RUNNING)
    return all(fetch_run(engine, i).status not in live for i in run_ids)


def test_scraped_metrics_match_what_the_worker_ran(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """Claims, outcomes, retries, durations and queue depth as scraped from /metrics."""
    ok = [_enqueue(engine, "test.noop") for _ in range(3)]
    failing = _enqueue(engine, "test.fail")  # three attempts: two retries, then failed
    hopeless = _enqueue(engine, "test.fail_now")
    waiting = [_enqueue(engine, "test.echo") for _ in range(4)]  # not served by this worker
    port = free_port()
    spawn_worker(
        "--pipelines",
        "test.[nf]*",
        env={"METRICS_PORT": str(port), "QUEUE_METRICS_INTERVAL": "0", "RECOVERY_INTERVAL": "0"},
    )
    wait_until(lambda: _finished(engine, [*ok, failing, hopeless]), 60, "the runs to finish")
    assert fetch_run(engine, failing).status == RunStatus.FAILED
    page = wait_until(lambda: answers(port), 30, "the metrics endpoint")
    assert page.status == 200
    values = samples(page.body)

    def value(name: str, **labels: str) -> float:
        return values[name, tuple(sorted(labels.items()))]

    assert value("orbit_runs_claimed_total", pipeline="test.noop") == 3
    assert value("orbit_runs_claimed_total", pipeline="test.fail") == 3
    assert value("orbit_runs_completed_total", pipeline="test.noop", outcome="succeeded") == 3
    assert value("orbit_runs_completed_total", pipeline="test.fail", outcome="failed") == 1
    assert value("orbit_runs_completed_total", pipeline="test.fail_now", outcome="failed") == 1
    assert value("orbit_runs_completed_total", pipeline="test.noop", outcome="failed") == 0
    assert value("orbit_retries_scheduled_total", pipeline="test.fail") == 2
    assert value("orbit_run_duration_seconds_count", pipeline="test.fail") == 3
    assert value("orbit_run_duration_seconds_count", pipeline="test.noop") == 3
    assert value("orbit_claim_latency_seconds_count", pipeline="test.noop") == 3
    assert value("orbit_runs_recovered_total", pipeline="test.noop") == 0
    assert value("orbit_runs_in_flight") == 0
    assert value("orbit_database_up") == 1
    assert value("orbit_queue_depth", pipeline="test.echo", status="pending") == len(waiting)
    assert value("orbit_queue_depth", pipeline="test.noop", status="pending") == 0
    assert value("orbit_oldest_pending_run_age_seconds", pipeline="test.echo") > 0
    assert 0 <= value("orbit_worker_heartbeat_age_seconds") < 30
    memory = {
        dict(labels)["process"]: v
        for (name, labels), v in values.items()
        if name == "orbit_process_memory_bytes"
    }
    assert {"worker", "forkserver", "executor-0", "executor-1"} == set(memory)
    assert all(
        value("orbit_process_memory_bytes", process=p, kind="rss")
        >= value("orbit_process_memory_bytes", process=p, kind="pss")
        > 0
        for p in memory
    )


def test_health_endpoint_turns_warning_when_a_run_is_stuck(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """/health of a worker is healthy, then warning (still 200) with stuckRuns once a run is stuck."""
    port = free_port()
    spawn_worker(env={"METRICS_PORT": str(port), "QUEUE_METRICS_INTERVAL": "0", "RECOVERY_INTERVAL": "0"})
    first = wait_until(lambda: answers(port, "/health"), 30, "the health endpoint")
    assert (first.status, json.loads(first.body)["status"]) == (200, "healthy")
    worker_row(engine, "crashed-worker", stopped=True)
    running_run(engine, "test.sleep", "crashed-worker", heartbeat_ago=3600)
    reply = get(port, "/health")
    body = json.loads(reply.body)
    assert (reply.status, body["status"], body["stuckRuns"]) == (200, "warning", 1)
    assert "1 stuck run(s)" in body["message"]


def test_recovered_runs_are_counted_by_pipeline(
    engine: Engine, spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """orbit_runs_recovered_total counts each recovered run under its pipeline, loaded here or not."""
    worker_row(engine, "crashed-worker", heartbeat_ago=3600)
    lost = [running_run(engine, "test.echo", "crashed-worker", heartbeat_ago=3600) for _ in range(2)]
    port = free_port()
    spawn_worker("--pipelines", "test.noop", env={"METRICS_PORT": str(port), "RECOVERY_INTERVAL": "100ms"})
    back = RunStatus.PENDING  # and never claimed: this worker does not run test.echo
    wait_until(lambda: all(fetch_run(engine, i).status == back for i in lost), 60, "the runs' recovery")
    values = samples(wait_until(lambda: answers(port), 30, "the metrics endpoint").body)
    assert values["orbit_runs_recovered_total", (("pipeline", "test.echo"),)] == 2
    assert values["orbit_runs_recovered_total", (("pipeline", "test.noop"),)] == 0


def test_orbit_metrics_reports_the_fleet_from_the_runs_table(
    engine: Engine, orbit: Callable[..., Any]
) -> None:
    """The fleet report counts runs finished within --since: 3 succeeded, 1 failed, durations."""
    for duration in (1, 2, 3):
        finished_run(engine, "test.noop", "succeeded", duration=duration, ago=60)
    finished_run(engine, "test.fail", "timed_out", duration=6, ago=120)
    finished_run(engine, "test.fail", "failed", duration=100, ago=7200)  # before the window
    finished_run(engine, "test.noop", "cancelled", ago=60)
    worker_row(engine, "w1")
    running_run(engine, "test.sleep", "w1")
    result = orbit("metrics", "--json", "--since", "1h")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "window": "1h",
        "totalRuns": 4,
        "succeeded": 3,
        "failed": 1,
        "errorRate": "25.00%",
        "successRate": "75.00%",
        "runsPerHour": "4.00",
        "avgDuration": "3000ms",
        "minDuration": "1000ms",
        "maxDuration": "6000ms",
        "pendingNow": 0,
        "runningNow": 1,
    }
    wider = json.loads(orbit("metrics", "--json", "--since", "3h").stdout)
    assert (wider["totalRuns"], wider["maxDuration"]) == (5, "100000ms")
    text = orbit("metrics")
    assert text.returncode == 0
    assert "Fleet Metrics Report" in text.stdout and "errorRate:" in text.stdout


def test_orbit_metrics_rejects_a_bad_window(orbit: Callable[..., Any]) -> None:
    """A --since that is not a duration exits 2 with one line."""
    result = orbit("metrics", "--since", "yesterday")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--since 'yesterday'" in result.stderr
