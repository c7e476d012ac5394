"""The worker's loop: one thread drives its parts, in turn, from a single ``wait``.

The parts (this package's modules) each answer one question: what to claim and where to start it
(``Producer``), what happens when a run ends (``Completer``), how the database is reached and
retried (``Session``), what is done periodically (``duties``) and what a stop request does
(``Shutdown``). The loop sleeps in one ``wait`` on the executors' sockets, the listening
connection's (app.notifier) and a wake-up pipe that signals, the listener's thread (a new
connection to adopt) and the watchdog write to. No transaction is open while a pipeline runs:
each database step is its own short transaction.

Other threads call in only to wake the loop (``_nudge``) or to read what it publishes (``health``
and the metrics, from the HTTP thread); everything else is the loop's own.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import time
from multiprocessing.connection import wait
from typing import Any

import structlog
from sqlalchemy import Connection

from app import __version__, logs, registration
from app.database import Database
from app.executor import ChildConfig, ExecutorPool, Outcome
from app.masking import one_line
from app.metrics import WorkerMetrics
from app.notifier import Notifier
from app.outcomes import Backoff, Failure
from app.recovery import Rescuer
from app.registration import Registration
from app.registry import Pipeline
from app.schedules import Scheduler
from app.settings import Settings
from app.states import ErrorKind
from app.stats import WorkerStats
from app.worker.completer import Completer, apply_saved
from app.worker.duties import Heartbeat, Report, Upkeep
from app.worker.exchange import Exchange, run_fields
from app.worker.observability import Observability
from app.worker.options import Options
from app.worker.producer import LEFT_WAITING, Producer
from app.worker.session import Session
from app.worker.shutdown import Shutdown
from app.worker.wakeup import Decision, Wakeup, passed_on

log = structlog.get_logger("orbit.worker")


class Worker:
    def __init__(
        self, settings: Settings, database: Database, pipelines: dict[str, Pipeline], options: Options
    ):
        s = self.settings = settings
        self.database, self.pipelines, self.options = database, pipelines, options
        self.log = log.bind(worker_id=options.worker_id)
        self.stats = WorkerStats()
        self.version = __version__ + (f"+{s.ORBIT_CODE_VERSION}" if s.ORBIT_CODE_VERSION else "")
        timeout_default = s.MAX_EXECUTION_TIMEOUT.total_seconds()
        self.defaults = {
            name: (p.max_attempts, p.timeout.total_seconds() if p.timeout else timeout_default)
            for name, p in pipelines.items()
        }
        child = ChildConfig(
            options.worker_id,
            database,
            tuple(s.pipeline_modules),
            s.LOG_LEVEL,
            max_memory=s.EXECUTOR_MAX_MEMORY or 0,
            recycle_after=s.EXECUTOR_RECYCLE_AFTER or 0,
            recycle_memory=s.EXECUTOR_RECYCLE_MEMORY or 0,
        )
        self.pool = ExecutorPool(options.concurrency, child, on_log=logs.relay, on_kill=self._nudge)
        self.shutdown = Shutdown(s.SHUTDOWN_GRACE.total_seconds(), s.SHUTDOWN_WRITE_TIMEOUT.total_seconds())
        poll = s.POLL_INTERVAL.total_seconds()
        self.session = Session(database, poll, self.log, self.shutdown.write_deadline)
        self.engine = self.session.engine
        self.metrics = WorkerMetrics(self.defaults)
        limits = {name: p.limits for name, p in pipelines.items() if p.limits}
        pooled = database.pgbouncer or database.url != database.direct_url
        self.exchange = Exchange(options.worker_id, self.defaults, self.version, limits, pooled)
        self.wakeup = Wakeup(options.worker_id, frozenset(self.defaults))
        self.notifier = Notifier(database, self._nudge)
        self._wire(s)
        self._wake_r, self._wake_w = _wake_pipe()
        self._exit_status = 0
        self.observability = Observability(
            s, self.engine, self.metrics, self.heartbeat, self.stats, self.pool, list(self.defaults)
        )

    def _wire(self, s: Settings) -> None:
        """The parts of the loop, each given what it works with."""
        backoff = Backoff(s.RETRY_BACKOFF_BASE, s.RETRY_BACKOFF_MAX)
        self.completer = Completer(self.session, self.exchange, backoff, self.stats, self.metrics, self.log)
        self.producer = Producer(
            self.session,
            self.pool,
            self.completer,
            self.exchange,
            self.metrics,
            self.log,
            poll_interval=s.POLL_INTERVAL.total_seconds(),
            burst=self.options.burst,
        )
        self.heartbeat = Heartbeat(
            s.HEARTBEAT_INTERVAL.total_seconds(),
            self.session,
            self.pool,
            self.producer,
            self.completer,
            self.wakeup,
        )
        rescuer = Rescuer(s.stale_after, s.WORKER_RETENTION, s.retention, s.RETENTION_BATCH)
        scheduler = Scheduler.of(self.pipelines.values())
        self.upkeep = Upkeep(
            s.RECOVERY_INTERVAL.total_seconds(), self.session, rescuer, scheduler, self.metrics
        )
        self.report = Report(s.METRICS_INTERVAL.total_seconds(), self.stats, self.heartbeat, self.log)

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (or, with ``burst``, until nothing is runnable); returns 0, or 1
        when outcomes could not be written and were saved for later (see app.spool)."""
        self.observability.start()
        restore_signals = self.shutdown.install(self._wake_w, self.request_stop)
        self.pool.start()
        try:
            apply_saved(self.engine, self.settings.DATA_DIR, self.log)
            self._register()
            self.notifier.start()
            self.log.info(
                "Worker started",
                concurrency=self.options.concurrency,
                pipelines=sorted(self.defaults),
                poll_interval_ms=int(self.settings.POLL_INTERVAL.total_seconds() * 1000),
            )
            # What start-up built (modules, the registry, the engine) lives as long as the worker:
            # out of the collector's reach, a full collection no longer walks it (milliseconds
            # that landed on a run's pickup now and then). Frozen without a collection first: one
            # took 50-70 ms between "Worker started" and the first claim, to free a few hundred
            # objects that import left behind.
            gc.freeze()
            while not self.step(time.monotonic()):
                self._wait(time.monotonic())
                self.after_wait(time.monotonic())
        finally:
            self.notifier.stop()
            logs.run_lines.flush()
            self._finish()
            self.observability.stop()
            restore_signals()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self._exit_status

    def wake(self, payload: str = "") -> None:
        """A new run was announced: poll at once, unless another worker is the one to take it
        (app.worker.wakeup); chosen but without room (or stopping), pass it on to every worker."""
        decision, now = self.wakeup.decide(payload), time.monotonic()
        room = not self.stopping and self.producer.limit(now) and self.session.ready(now)
        if decision is Decision.NOT_MINE:
            if room:  # in case the chosen one does not take it (app.worker.producer.LEFT_WAITING)
                self.producer.look_again = min(self.producer.look_again, now + LEFT_WAITING)
            return
        if decision is Decision.CHOSEN and not room:
            self.notifier.send(passed_on(payload))
            return
        self.producer.next_poll = 0.0

    def _nudge(self) -> None:
        """End the loop's wait (from another thread: the listener, the time-limit thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"w")

    def request_stop(self, *_: Any) -> None:
        """First call: graceful stop within the grace. Second call: stop now. A signal handler:
        it only records the request (the loop acts on it, as the handler may run in the middle of
        anything the loop does, a log line or an executor's teardown)."""
        self.shutdown.request(time.monotonic())

    @property
    def stopping(self) -> bool:
        return self.shutdown.requested

    def _register(self) -> None:
        """Register this process; WorkerIdInUse when a live process holds its worker id."""
        me, stale_after = self._registration(), self.settings.stale_after

        def register(conn: Connection) -> bool:
            registration.register(conn, me, stale_after)
            return True

        while self.session.call(register) is None and not self.stopping:
            self._sleep(self.session.retry_at - time.monotonic())

    def _registration(self) -> Registration:
        return Registration(
            id=self.options.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.options.concurrency,
            pipeline_filter=self.options.pipeline_filter,
            pipelines=sorted(self.defaults),
            version=self.version,
            limits=json.dumps({name: flow.as_claim() for name, flow in self.exchange.limits.items()}),
        )

    # --- the loop ----------------------------------------------------------------------------

    def step(self, now: float) -> bool:
        """Start and claim what fits, or advance the shutdown; True when the loop should end."""
        producer = self.producer
        if self.stopping:
            if not self.pool.stopping:
                self.pool.ask_to_stop()
                self.log.info("Shutting down: no new runs", runs_in_flight=self.pool.held)
            if self.shutdown.grace_over(now):
                self._release_in_flight()
            self._collect_read()
            if producer.in_doubt and self.session.ready(now):
                producer.take_up_unheld()  # to give them back with the rest
            producer.take_back()
            producer.give_back()
            return not self.pool.held
        self._collect_read()
        producer.dispatch()
        limit, waited = producer.limit(now), producer.due(now)
        if limit and waited is not None:
            return producer.claim(now, limit, waited) == 0 and not waited and self._burst_done()
        return False

    def _collect_read(self) -> None:
        """Outcomes the pool read outside a wait (stopping a run, or at the grace's end), before
        the loop decides it has nothing left: else they would be lost with the loop's end."""
        if self.pool.unreported:
            for outcome in self.pool.collect([]):
                self._ended(outcome)

    def _burst_done(self) -> bool:
        idle = not (self.pool.held or self.completer.held or self.producer.claimed)
        return self.options.burst and idle

    def _wait(self, now: float) -> None:
        duties = (self.heartbeat.every, self.upkeep.every, self.report.every)
        timeout = min(1.0, *(every.remaining(now) for every in duties))
        if not self.stopping and self.producer.limit(now):
            timeout = min(timeout, max(0.0, min(self.producer.next_poll, self.producer.look_again) - now))
        timeout = min(timeout, self.shutdown.remaining(now))
        if self.completer.held and not self.session.ready(now):
            timeout = min(timeout, self.session.retry_at - now)  # outcomes wait for the database
        timeout = min(timeout, self.completer.remaining(now))
        logs.run_lines.flush()
        ready = wait([*self.pool.connections(), self._wake_r, *self.notifier.sockets()], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        for payload in self.notifier.take(ready):
            self.wake(payload)
        for outcome in self.pool.collect(ready):
            self._ended(outcome)
        if not self.stopping:
            self.producer.dispatch()  # keep the executors busy while the loop talks to the database

    def after_wait(self, now: float) -> None:
        """What the loop does after each wait: time limits, outcomes due, periodic duties."""
        for outcome in self.pool.expire():
            self._ended(outcome)
        idle = self.stopping or not (self.pool.held or self.producer.claimed)
        if self.completer.due(now, idle=idle):
            self.completer.flush()
        if self.heartbeat.every.ready(now):
            self.heartbeat.run_once()
        if self.upkeep.every.ready(now) and not self.stopping:
            self.upkeep.run_once()
        if self.report.every.ready(now):
            self.report.run_once(now)

    def _ended(self, outcome: Outcome) -> None:
        self.producer.pace.finished(time.monotonic())
        self.producer.durations.ended(outcome.run.pipeline, outcome.duration)
        self.completer.record(outcome)

    def _sleep(self, seconds: float) -> None:
        if wait([self._wake_r], max(0.0, seconds)):
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)  # else every later sleep would end at once

    # --- shutdown ----------------------------------------------------------------------------

    def _release_in_flight(self) -> None:
        # What ended before the grace ran out may wait in its pipe, unread while the loop waited
        # on the database: recorded first, or a finished run would be released and run again.
        for outcome in self.pool.collect(wait(self.pool.connections(), 0)):
            self._ended(outcome)
        lost = Failure(ErrorKind.INTERRUPTED, "Shutdown", "worker shut down")
        for outcome in self.pool.stop_all(lost):
            self.completer.release(outcome.run)
            self.log.warning("Run released at shutdown", **run_fields(outcome.run))

    def _finish(self) -> None:
        try:
            self._write_last()
        except Exception as exc:  # the error that ended the loop, met again: the executors still go
            self.log.error("Outcomes could not be written", error=one_line(exc))
        finally:
            try:
                if self.completer.save(self.settings.DATA_DIR):
                    self._exit_status = 1
            finally:
                self.pool.close()
                self.session.close()
        self.log.info("Worker stopped", **self.stats.report())

    def _write_last(self) -> None:
        """Keep trying until SHUTDOWN_WRITE_TIMEOUT after the grace (after the loop ended, when
        the worker was not stopped): the outcomes held are the only record of what those runs did."""
        if not self.stopping:
            self.shutdown.writes_until = time.monotonic() + self.shutdown.write_timeout
        self.completer.write_last(self.shutdown.write_deadline, self._sleep)
        if not self.completer.held:
            # Marked stopped, its runs would be recovered at once: not while outcomes are held.
            self.session.call(lambda conn: registration.stop(conn, self._registration()))


def _wake_pipe() -> tuple[int, int]:
    """The pipe that ends the loop's wait: written by signals, the listener and the watchdog."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write
