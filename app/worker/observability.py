"""What a worker publishes, read from its HTTP thread: ``/metrics`` and ``/health``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from app import health, queries
from app.executor import ExecutorPool
from app.http_server import HttpServer
from app.metrics import MemoryCollector, QueueCollector, Throttle, WorkerMetrics
from app.settings import Settings
from app.stats import WorkerStats
from app.worker.duties import Heartbeat


class Observability:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        metrics: WorkerMetrics,
        heartbeat: Heartbeat,
        stats: WorkerStats,
        pool: ExecutorPool,
        pipelines: list[str],
    ) -> None:
        self.settings, self.engine, self.heartbeat, self.stats = settings, engine, heartbeat, stats
        every = settings.QUEUE_METRICS_INTERVAL.total_seconds()
        metrics.watch(heartbeat.silent_for, lambda: pool.running)
        metrics.registry.register(QueueCollector(self._queue_depth, every, pipelines))
        metrics.registry.register(MemoryCollector(lambda: heartbeat.memory))
        self._fleet_health = Throttle(lambda: health.check(engine, settings), every)
        self.http: HttpServer | None = None
        if settings.metrics_port:
            self.http = HttpServer(
                settings.METRICS_HOST, settings.metrics_port, metrics.registry, self.health
            )

    def start(self) -> None:
        if self.http is not None:
            self.http.start()

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()

    def _queue_depth(self) -> list[queries.QueueDepth]:
        with self.engine.connect() as conn:
            return queries.queue_depth(conn)

    def health(self) -> health.Health:
        """The fleet's health, plus this worker's own heartbeat: silent past STALE_AFTER is an error."""
        fleet = self._fleet_health.get()
        problems = list(fleet.problems)
        silent = self.heartbeat.silent_for()
        if silent > self.settings.stale_after.total_seconds():
            problems.append(
                health.Problem(health.Status.ERROR, f"this worker's last heartbeat was {silent:.0f}s ago")
            )
        return health.Health(problems, self._last_activity(), fleet.stuck_runs)

    def _last_activity(self) -> datetime | None:
        if self.stats.last_activity is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=time.monotonic() - self.stats.last_activity)
