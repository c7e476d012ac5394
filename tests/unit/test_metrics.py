"""Metrics without a worker: the queue gauges' caching and the exported names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy.exc import OperationalError

from app.metrics import QueueCollector, WorkerMetrics
from app.queries import QueueDepth
from tests.support.http import samples


def test_queue_gauges_query_the_database_at_most_every_interval() -> None:
    """Scrapes within QUEUE_METRICS_INTERVAL reuse one query; a failing query reports database down."""
    calls: list[int] = []

    def read() -> list[QueueDepth]:
        calls.append(1)
        if len(calls) > 1:
            raise OperationalError("SELECT", {}, Exception("gone"))
        return [QueueDepth("p", "pending", 7, 12.5)]

    registry = CollectorRegistry()
    registry.register(QueueCollector(read, 3600, ["p", "q"]))
    for _ in range(3):
        values = samples(generate_latest(registry).decode())
    assert len(calls) == 1
    assert values["orbit_queue_depth", (("pipeline", "p"), ("status", "pending"))] == 7
    assert values["orbit_queue_depth", (("pipeline", "q"), ("status", "running"))] == 0
    assert values["orbit_oldest_pending_run_age_seconds", (("pipeline", "p"),)] == 12.5

    down = CollectorRegistry()
    down.register(QueueCollector(read, 0, ["p"]))
    values = samples(generate_latest(down).decode())
    assert values["orbit_database_up", ()] == 0
    assert not any(name == "orbit_queue_depth" for name, _ in values)


def test_metric_names_follow_prometheus_conventions() -> None:
    """Every exported name has the orbit_ prefix; counters end in _total, durations in _seconds."""
    metrics = WorkerMetrics(["p"])
    metrics.attempt_ended("p", "succeeded", 0.2)
    metrics.registry.register(QueueCollector(lambda: [], 0, ["p"]))
    names = {name for name, _ in samples(generate_latest(metrics.registry).decode())}
    assert names and all(name.startswith("orbit_") for name in names)
    assert {"orbit_runs_claimed_total", "orbit_run_duration_seconds_bucket"} <= names
