"""Prometheus metrics of one worker process, in a registry of its own.

Counters and histograms are updated by the worker loop as runs are claimed and end. Queue depth
and the oldest pending run come from one cheap query, run when Prometheus scrapes and at most
every ``QUEUE_METRICS_INTERVAL``, so an idle scrape target costs the database nothing extra.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError

from app import states
from app.memory import Snapshot
from app.queries import ClaimedRun, QueueDepth

T = TypeVar("T")

# Runs last from milliseconds to the default time limit of ten minutes, and beyond.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
FINAL_OUTCOMES = tuple(str(status) for status in states.ordered(states.FINAL_OUTCOMES))
LIVE_STATUSES = tuple(str(status) for status in states.ordered(states.LIVE))


class WorkerMetrics:
    """The metrics objects of one worker; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, pipelines: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.claimed = Counter("orbit_runs_claimed", "Runs claimed by this worker", ["pipeline"], registry=r)
        self.completed = Counter(
            "orbit_runs_completed",
            "Runs this worker ended, by final outcome (succeeded, failed, timed_out)",
            ["pipeline", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "orbit_run_duration_seconds",
            "Duration of each attempt this worker ran (retried attempts included)",
            ["pipeline"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "orbit_retries_scheduled", "Failed attempts put back for a retry", ["pipeline"], registry=r
        )
        self.recovered = Counter(
            "orbit_runs_recovered",
            "Interrupted runs recovered by this worker's rescuer (of any pipeline)",
            ["pipeline"],
            registry=r,
        )
        self.claim_latency = Histogram(
            "orbit_claim_latency_seconds",
            "Seconds from a run being due to its claim",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "orbit_worker_heartbeat_age_seconds",
            "Seconds since this worker last wrote its heartbeat",
            registry=r,
        )
        self.in_flight = Gauge("orbit_runs_in_flight", "Runs executing in this worker now", registry=r)
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._start_series(pipelines)

    def _start_series(self, pipelines: Iterable[str]) -> None:
        """Series exist from the start, so rate() sees the first increment."""
        for pipeline in pipelines:
            self.claimed.labels(pipeline)
            self.retries.labels(pipeline)
            self.recovered.labels(pipeline)
            for outcome in FINAL_OUTCOMES:
                self.completed.labels(pipeline, outcome)

    def watch(self, heartbeat_age: Callable[[], float], in_flight: Callable[[], float]) -> None:
        """Read these gauges from the worker at scrape time."""
        self.heartbeat_age.set_function(heartbeat_age)
        self.in_flight.set_function(in_flight)

    def _of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: the worker updates a few series thousands of times a
        second, and ``labels`` costs more than the update."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def run_claimed(self, run: ClaimedRun) -> None:
        self._of(self.claimed, run.pipeline).inc()
        self._of(self.claim_latency, run.pipeline).observe(run.waited_s)

    def runs_recovered(self, pipelines: Iterable[str]) -> None:
        """Count recovered runs, one pipeline name per run."""
        for pipeline in pipelines:
            self.recovered.labels(pipeline).inc()

    def attempt_ended(self, pipeline: str, outcome: str, duration: float) -> None:
        """Record an attempt; ``outcome`` is a final one, or ``pending`` for a scheduled retry."""
        self._of(self.duration, pipeline).observe(duration)
        if outcome in FINAL_OUTCOMES:
            self._of(self.completed, pipeline, outcome).inc()
        else:
            self._of(self.retries, pipeline).inc()


class Throttle(Generic[T]):
    """Call ``fetch`` at most every ``every`` seconds; between calls, return the last value."""

    def __init__(self, fetch: Callable[[], T], every: float, clock: Callable[[], float] = time.monotonic):
        self._fetch, self._every, self._clock = fetch, every, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at: float | None = None

    def get(self) -> T:
        with self._lock:
            now = self._clock()
            if self._value is None or self._at is None or now - self._at >= self._every:
                self._value, self._at = self._fetch(), now
            return self._value


class QueueCollector:
    """``orbit_queue_depth``, ``orbit_oldest_pending_run_age_seconds`` and ``orbit_database_up``."""

    def __init__(self, read: Callable[[], list[QueueDepth]], every: float, pipelines: Iterable[str]) -> None:
        self._pipelines = sorted(pipelines)
        self._snapshot = Throttle(lambda: self._read(read), every)

    @staticmethod
    def _read(read: Callable[[], list[QueueDepth]]) -> list[QueueDepth] | None:
        try:
            return read()
        except SQLAlchemyError:
            return None

    def describe(self) -> list[Metric]:
        # Registration would otherwise call collect(), and query the database, at start-up.
        return [
            GaugeMetricFamily("orbit_queue_depth", "", labels=["pipeline", "status"]),
            GaugeMetricFamily("orbit_oldest_pending_run_age_seconds", "", labels=["pipeline"]),
            GaugeMetricFamily("orbit_database_up", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        rows = self._snapshot.get()
        yield GaugeMetricFamily(
            "orbit_database_up", "1 when the last queue query succeeded", value=int(rows is not None)
        )
        if rows is None:
            return
        depth = GaugeMetricFamily(
            "orbit_queue_depth",
            "Runs by pipeline and status, fleet-wide (pending: due now)",
            labels=["pipeline", "status"],
        )
        oldest = GaugeMetricFamily(
            "orbit_oldest_pending_run_age_seconds",
            "Seconds the oldest due pending run has waited, fleet-wide",
            labels=["pipeline"],
        )
        counts = {(p, s): 0.0 for p in self._pipelines for s in LIVE_STATUSES}
        ages = dict.fromkeys(self._pipelines, 0.0)
        for row in rows:
            counts[row.pipeline, row.status] = float(row.runs)
            if row.status == states.RunStatus.PENDING:
                ages[row.pipeline] = row.oldest_s
        for (pipeline, status), value in sorted(counts.items()):
            depth.add_metric([pipeline, status], value)
        for pipeline, age in sorted(ages.items()):
            oldest.add_metric([pipeline], age)
        yield depth
        yield oldest


class MemoryCollector:
    """``orbit_process_memory_bytes``: what each of the worker's processes used at its last
    heartbeat (app.memory), by process (``worker``, ``forkserver``, ``executor-N``) and kind
    (``rss``, ``pss``)."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("orbit_process_memory_bytes", "", labels=["process", "kind"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "orbit_process_memory_bytes",
            "Memory of this worker's processes, read once a minute: resident (rss) and"
            " proportional (pss, shared pages divided among the processes sharing them)",
            labels=["process", "kind"],
        )
        for name, usage in self._read().processes():
            family.add_metric([name, "rss"], usage.rss)
            family.add_metric([name, "pss"], usage.pss)
        yield family
