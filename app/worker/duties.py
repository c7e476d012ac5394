"""The worker's periodic duties, each on the loop's one clock: the heartbeat, upkeep (rescue,
retention, schedules) and the metrics report. Each has a ``run_once`` that tests call directly;
the loop calls it when ``every.ready(now)``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from app import queries
from app.executor import ExecutorPool
from app.memory import Snapshot
from app.metrics import WorkerMetrics
from app.recovery import Rescuer, prune_in_batches
from app.schedules import Scheduler
from app.stats import WorkerStats
from app.worker.completer import Completer
from app.worker.exchange import run_fields
from app.worker.producer import Producer
from app.worker.session import Session
from app.worker.wakeup import Wakeup

PRUNE_BATCHES_PER_PASS = 10
# How often the heartbeat reads what the worker's processes use: a reading takes 1-2 ms of the
# loop (a file in /proc per process), which every heartbeat put on a pickup now and then.
MEMORY_EVERY = 60.0


@dataclass
class Every:
    """When a duty is due: every ``interval`` seconds (never when 0), first at ``due``."""

    interval: float
    due: float = 0.0

    def ready(self, now: float) -> bool:
        if self.interval <= 0 or now < self.due:
            return False
        self.due = now + self.interval
        return True

    def remaining(self, now: float) -> float:
        return float("inf") if self.interval <= 0 else max(0.0, self.due - now)


class Heartbeat:
    """Keeps this worker's runs its own: running, claimed ahead, or with an outcome not yet
    written. A run the heartbeat no longer finds ours (cancelled, or rescued while this worker was
    unreachable) is stopped."""

    def __init__(
        self,
        interval: float,
        session: Session,
        pool: ExecutorPool,
        producer: Producer,
        completer: Completer,
        wakeup: Wakeup,
    ) -> None:
        self.every = Every(interval)
        self.session, self.pool, self.producer, self.completer = session, pool, producer, completer
        self.wakeup = wakeup
        self.last = time.monotonic()  # when a heartbeat was last written
        self.memory = Snapshot()  # what the worker's processes used at the last reading
        self.memory_read = Every(MEMORY_EVERY)

    def silent_for(self) -> float:
        return time.monotonic() - self.last

    def run_once(self) -> None:
        # A run whose outcome waits to be written is still this worker's: once the database is
        # back, the rescuer must not recover it before the worker's next write (its backoff).
        runs = [*self.pool.busy, *self.producer.claimed, *self.completer.held.values()]
        held = {run.id: run.attempt for run in runs}
        worker_id = self.producer.exchange.worker_id
        memory = None  # the last reading stays in the table
        if self.memory_read.ready(time.monotonic()):
            self.memory = Snapshot.of(os.getpid(), self.pool.executor_pids, self.pool.server_pid)
            memory = self.memory.as_json()
        within = 2 * self.every.interval
        done = self.session.call(
            lambda conn: queries.beat(conn, worker_id, held, memory, within), atomic=False
        )
        if done is None:
            return
        still_ours = done.still_ours
        self.producer.exchange.overrides = done.overrides
        self.wakeup.update(done.workers)
        self.last = time.monotonic()
        lost = set(held) - still_ours
        for run_id in lost:
            stopped = self.pool.stop(run_id)
            if stopped is not None:
                self.producer.log.warning(
                    "Run stopped: cancelled or taken over elsewhere", **run_fields(stopped)
                )
        self.producer.take_back()
        self.producer.forget(lost)


class Upkeep:
    """Rescue of interrupted runs, retention, and scheduled runs: done by whichever worker holds
    the leader lock (app.recovery), checked by every worker every RECOVERY_INTERVAL."""

    def __init__(
        self,
        interval: float,
        session: Session,
        rescuer: Rescuer,
        scheduler: Scheduler,
        metrics: WorkerMetrics,
    ) -> None:
        self.every = Every(interval)
        self.session, self.rescuer, self.scheduler, self.metrics = session, rescuer, scheduler, metrics

    def run_once(self) -> None:
        recovered = self.session.call(self.rescuer.run_once)
        self.metrics.runs_recovered(row.pipeline for row in recovered or [])
        self._prune()
        self.session.call(self.scheduler.run_once)

    def _prune(self) -> None:
        prune = self.rescuer.prune_once
        prune_in_batches(lambda: self.session.call(prune), self.rescuer.batch, PRUNE_BATCHES_PER_PASS)


class Report:
    """The "Worker Metrics Report" log line, every METRICS_INTERVAL (the first one interval after
    start), with what the worker's processes used at the last heartbeat."""

    def __init__(self, interval: float, stats: WorkerStats, heartbeat: Heartbeat, log: Any) -> None:
        self.every = Every(interval, time.monotonic() + interval)
        self.stats, self.heartbeat, self.log = stats, heartbeat, log

    def run_once(self, now: float) -> None:
        self.log.info(
            "Worker Metrics Report", **self.stats.report(now), memory=self.heartbeat.memory.describe()
        )
