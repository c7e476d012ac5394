"""The SQL of docs/observability.md runs against the schema and returns what the tests put in."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.support.paths import ROOT
from tests.support.runs import finished_run, pending_run, running_run, worker_row

DOC = ROOT / "docs" / "observability.md"


def _queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.DOTALL)
    named = {}
    for block in blocks:
        match = re.match(r"-- name: ([\w-]+)\n", block)
        assert match, f"an SQL example without a '-- name:' line: {block[:60]!r}"
        named[match.group(1)] = block
    return named


def _run(engine: Engine, name: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(_queries()[name])))


def test_the_documented_queries_are_the_expected_ones() -> None:
    """The page answers what an operator asks: what is stuck, what failed and why, what is slow."""
    assert set(_queries()) == {
        "queue-summary",
        "stuck-runs",
        "failed-today",
        "errors-today",
        "slowest-pipelines",
        "hourly-throughput",
        "workers",
    }


@pytest.mark.parametrize("name", sorted(_queries()))
def test_each_query_runs_on_an_empty_database(engine: Engine, name: str) -> None:
    """Every example is valid against the current schema."""
    assert _run(engine, name) == []


def test_queue_summary_and_stuck_runs(engine: Engine) -> None:
    """Due pending runs are counted with their wait; a silent running run is listed as stuck."""
    worker_row(engine, "alive")
    for _ in range(3):
        pending_run(engine, "p.a", due_ago=120)
    pending_run(engine, "p.a", due_ago=-3600)  # scheduled for later: not in the queue yet
    healthy = running_run(engine, "p.b", "alive")
    stuck = running_run(engine, "p.b", "alive", heartbeat_ago=600)
    summary = {(r.pipeline, r.status): r for r in _run(engine, "queue-summary")}
    assert summary["p.a", "pending"].runs == 3
    assert summary["p.a", "pending"].longest_wait.total_seconds() >= 120
    assert summary["p.b", "running"].runs == 2
    assert [r.id for r in _run(engine, "stuck-runs")] == [stuck]
    assert healthy != stuck
    assert {(r.id, r.running) for r in _run(engine, "workers")} == {("alive", 2)}


def test_failures_and_slowest_pipelines(engine: Engine) -> None:
    """Failed runs of today are listed with their error; pipelines are ranked by average duration."""
    failed = finished_run(engine, "p.fail", "failed", error="ValueError: bad input")
    finished_run(engine, "p.slow", "succeeded", duration=30)
    finished_run(engine, "p.fast", "succeeded", duration=1)
    finished_run(engine, "p.fast", "succeeded", duration=3)
    rows = _run(engine, "failed-today")
    # A run that failed just after midnight UTC may fall on either side of the day boundary.
    assert [(r.id, r.error) for r in rows] in ([(failed, "ValueError: bad input")], [])
    slowest = _run(engine, "slowest-pipelines")
    assert [(r.pipeline, r.runs) for r in slowest] == [("p.slow", 1), ("p.fast", 2)]
    assert slowest[1].avg_duration.total_seconds() == pytest.approx(2.0)
    hourly = _run(engine, "hourly-throughput")
    assert sum(r.succeeded for r in hourly) == 3
    assert sum(r.failed for r in hourly) == 1


def _view(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def test_the_queue_summary_view_counts_by_pipeline_and_status(engine: Engine) -> None:
    pending_run(engine, "etl.load", due_ago=120)
    pending_run(engine, "etl.load", due_ago=5)
    pending_run(engine, "etl.load", due_ago=-3600)
    finished_run(engine, "etl.load", "failed")
    rows = {
        (r.pipeline, r.status): r
        for r in _view(engine, "SELECT * FROM orbit_queue_summary WHERE pipeline = 'etl.load'")
    }
    assert rows[("etl.load", "pending")].runs == 3
    assert rows[("etl.load", "pending")].scheduled_later == 1
    assert 119 <= rows[("etl.load", "pending")].oldest_due_age.total_seconds() < 180
    assert rows[("etl.load", "failed")].runs == 1


def test_the_interrupted_runs_view_follows_orbit_stale_after(engine: Engine) -> None:
    worker_row(engine, "alive")
    worker_row(engine, "gone", stopped=True)
    silent = running_run(engine, "etl.load", "alive", heartbeat_ago=60)
    fresh = running_run(engine, "etl.load", "alive", heartbeat_ago=1)
    orphan = running_run(engine, "etl.load", "gone", heartbeat_ago=1)
    sql = "SELECT id FROM orbit_interrupted_runs ORDER BY id"
    assert [r.id for r in _view(engine, sql)] == [silent, orphan]
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL orbit.stale_after = '2 minutes'"))
        assert [r.id for r in conn.execute(text(sql))] == [orphan]
    assert fresh not in [r.id for r in _view(engine, sql)]
