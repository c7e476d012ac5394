"""``GET /metrics`` of ``orbit serve``: Prometheus text of the whole fleet, read from the database
when scraped (a worker's own ``/metrics`` covers what only that process knows)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection

from app import queries
from app.metrics import QueueCollector
from app.settings import Settings
from app.states import FINISHED, ordered

WINDOW = timedelta(hours=1)


class _Fleet:
    """Finished runs over the last hour, live workers and the failure rate, from one connection."""

    def __init__(self, conn: Connection, settings: Settings) -> None:
        self._conn, self._settings = conn, settings

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        finished = GaugeMetricFamily(
            "orbit_fleet_finished_runs",
            "Runs that finished within the last hour, by pipeline and status",
            labels=["pipeline", "status"],
        )
        ended = {str(status) for status in ordered(FINISHED)}
        for row in queries.counts(self._conn, WINDOW.total_seconds()):
            if row.status in ended:
                finished.add_metric([row.pipeline, row.status], float(row.runs))
        yield finished
        snapshot = queries.health_snapshot(
            self._conn,
            window=self._settings.HEALTH_FAILURE_WINDOW,
            backlog_for=self._settings.HEALTH_BACKLOG_FOR,
            stale_after=self._settings.stale_after,
        )
        yield GaugeMetricFamily(
            "orbit_fleet_workers_alive", "Workers heard from within STALE_AFTER", value=snapshot.live_workers
        )
        rate = snapshot.failed / snapshot.finished if snapshot.finished else 0.0
        yield GaugeMetricFamily(
            "orbit_fleet_failure_ratio",
            "Failed share of the runs that finished within HEALTH_FAILURE_WINDOW (0 to 1)",
            value=rate,
        )
        yield GaugeMetricFamily(
            "orbit_fleet_stuck_runs",
            "Interrupted runs, or runs far past their limit",
            value=snapshot.stuck_runs,
        )
        yield GaugeMetricFamily(
            "orbit_fleet_waiting_on_limits",
            "Runs due for over HEALTH_BACKLOG_FOR that a flow-control limit holds back (not a backlog)",
            value=snapshot.limit_waiting,
        )


def render(conn: Connection, settings: Settings) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(lambda: queries.queue_depth(conn), 0.0, []))
    registry.register(_Fleet(conn, settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST
