"""The worker: claims runs, executes them in its executor pool, and records their outcomes.

One thread drives everything from a single loop (claim, collect outcomes, enforce time limits,
heartbeat, rescue, report) so there is no shared state to lock. It sleeps in one ``wait`` on the
executors' pipes and a wake-up pipe that signals and the LISTEN thread write to. No transaction is
open while a pipeline runs: each database step is its own short transaction. When runs finish
quickly the worker claims a few ahead of its free slots (see app.batching), and outcomes are
written in batches, together with the next claim when there is one; when the database is away
they stay in memory and are written when it is back (a worker stopped before then saves them
on disk, see app.spool). A run claimed ahead is the worker's like a running one: its heartbeat
is kept, and it is given back untouched at shutdown.

Run it with ``python -m app.worker`` or ``orbit worker``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import wait
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from app import __version__, arguments, health, logs, queries, registration, spool
from app.batching import FlushPolicy, Pace
from app.database import (
    Database,
    DatabaseError,
    KeptConnection,
    check_schema,
    migrate,
    resolve,
)
from app.deadlines import DEADLINES
from app.executor import ChildConfig, ExecutorError, ExecutorPool, Outcome
from app.http_server import HttpServer, HttpServerError
from app.metrics import QueueCollector, Throttle, WorkerMetrics
from app.notifier import Notifier
from app.outcomes import Backoff, Failure, release, transition_for
from app.queries import ClaimedRun, Success, Transition
from app.recovery import Rescuer
from app.registration import Registration, WorkerIdInUse
from app.registry import Pipeline, RegistryError, discover
from app.schedules import Scheduler
from app.settings import Settings, load_settings_or_exit
from app.states import ErrorKind
from app.stats import WorkerStats

log = structlog.get_logger("orbit.worker")
T = TypeVar("T")
PRUNE_BATCHES_PER_PASS = 10


@dataclass
class Options:
    """What the command line may override for one worker process."""

    concurrency: int
    worker_id: str
    pipeline_filter: str
    burst: bool = False


@dataclass
class _Every:
    """A periodic duty of the loop, due every ``interval`` seconds (never when 0)."""

    interval: float
    due: float = 0.0

    def ready(self, now: float) -> bool:
        if self.interval <= 0 or now < self.due:
            return False
        self.due = now + self.interval
        return True

    def remaining(self, now: float) -> float:
        return float("inf") if self.interval <= 0 else max(0.0, self.due - now)


@dataclass
class Worker:
    settings: Settings
    database: Database
    pipelines: dict[str, Pipeline]
    options: Options
    stats: WorkerStats = field(default_factory=WorkerStats)

    def __post_init__(self) -> None:
        s = self.settings
        self.engine: Engine = self.database.engine(pool_size=2)
        self.backoff = Backoff(s.RETRY_BACKOFF_BASE, s.RETRY_BACKOFF_MAX)
        self.version = __version__ + (f"+{s.ORBIT_CODE_VERSION}" if s.ORBIT_CODE_VERSION else "")
        timeout_default = s.MAX_EXECUTION_TIMEOUT.total_seconds()
        self.defaults = {
            name: (p.max_attempts, p.timeout.total_seconds() if p.timeout else timeout_default)
            for name, p in self.pipelines.items()
        }
        self.pool = ExecutorPool(
            self.options.concurrency,
            ChildConfig(
                self.options.worker_id,
                self.database,
                tuple(s.pipeline_modules),
                s.LOG_LEVEL,
            ),
            on_log=logs.relay,
            on_kill=self._nudge,
        )
        self.scheduler = Scheduler.of(self.pipelines.values())
        self.rescuer = Rescuer(s.stale_after, s.WORKER_RETENTION, s.retention, s.RETENTION_BATCH)
        self.log = log.bind(worker_id=self.options.worker_id)
        self._successes: list[Success] = []
        self._transitions: list[Transition] = []
        self._unwritten: dict[int, ClaimedRun] = {}  # by run id: outcome not yet in the database
        self._claimed: deque[ClaimedRun] = deque()  # claimed ahead, not started yet
        self._pace = Pace(self.options.concurrency)
        self._flush_policy = FlushPolicy()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._signals = 0
        self._stop_deadline: float | None = None
        self._writes_until = float("inf")  # a stopping worker's last try at writing outcomes
        self._exit_status = 0
        self._db_failures = 0
        self._conn = KeptConnection(self.engine)  # see _db
        self._db_retry_at = 0.0
        self._claim_in_doubt = False  # a turn that claimed failed: it may have committed anyway
        self._outcomes_in_doubt = False  # a turn that wrote outcomes failed: the same
        self._next_poll = 0.0
        self._heartbeat = _Every(s.HEARTBEAT_INTERVAL.total_seconds())
        self._rescue = _Every(s.RECOVERY_INTERVAL.total_seconds())
        report_every = s.METRICS_INTERVAL.total_seconds()
        self._report = _Every(report_every, time.monotonic() + report_every)
        self._last_beat = time.monotonic()
        self.metrics = WorkerMetrics(self.defaults)
        self.metrics.watch(lambda: time.monotonic() - self._last_beat, lambda: self.pool.running)
        every = s.QUEUE_METRICS_INTERVAL.total_seconds()
        self.metrics.registry.register(QueueCollector(self._queue_depth, every, self.defaults))
        self._fleet_health = Throttle(lambda: health.check(self.engine, s), every)
        self.http: HttpServer | None = None
        if s.metrics_port:
            self.http = HttpServer(s.METRICS_HOST, s.metrics_port, self.metrics.registry, self.health)

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (or, with ``burst``, until nothing is runnable); returns 0, or 1
        when outcomes could not be written and were saved for later (see app.spool)."""
        if self.http is not None:
            self.http.start()
        restore_signals = self._install_signals()
        self.pool.start()
        notifier = Notifier(self.database, self.wake)
        try:
            self._apply_spooled()
            self._register()
            notifier.start()
            self.log.info(
                "Worker started",
                concurrency=self.options.concurrency,
                pipelines=sorted(self.defaults),
                poll_interval_ms=int(self.settings.POLL_INTERVAL.total_seconds() * 1000),
            )
            self._loop()
        finally:
            notifier.stop()
            self._finish()
            if self.http is not None:
                self.http.stop()
            restore_signals()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self._exit_status

    def wake(self) -> None:
        """Poll at once (a new run was announced)."""
        self._next_poll = 0.0
        self._nudge()

    def _nudge(self) -> None:
        """End the loop's wait (from another thread: the listener, the time-limit thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"w")

    def request_stop(self, *_: Any) -> None:
        """First call: graceful stop within the grace. Second call: stop now."""
        self._signals += 1
        now = time.monotonic()
        if self._signals == 1:
            self._stop_deadline = now + self.settings.SHUTDOWN_GRACE.total_seconds()
            self._writes_until = self._stop_deadline + self.settings.SHUTDOWN_WRITE_TIMEOUT.total_seconds()
            self.pool.ask_to_stop()
            self.log.info("Shutting down: no new runs", runs_in_flight=len(self.pool.busy))
        else:
            self._stop_deadline = self._writes_until = now  # one last try at writing, then saved

    @property
    def stopping(self) -> bool:
        return self._stop_deadline is not None

    def _install_signals(self) -> Callable[[], None]:
        """Route SIGTERM and SIGINT to :meth:`request_stop`; returns what restores the old ones."""
        old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        old = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    def _register(self) -> None:
        """Register this process; WorkerIdInUse when a live process holds its worker id."""
        me, stale_after = self._registration(), self.settings.stale_after

        def register(conn: Connection) -> bool:
            registration.register(conn, me, stale_after)
            return True

        while self._db(register) is None and not self.stopping:
            self._sleep(self._db_retry_at - time.monotonic())

    def _registration(self) -> Registration:
        return Registration(
            id=self.options.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.options.concurrency,
            pipeline_filter=self.options.pipeline_filter,
            pipelines=sorted(self.defaults),
            version=self.version,
        )

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._step(time.monotonic()):
            self._wait(time.monotonic())
            self._after_wait(time.monotonic())

    def _step(self, now: float) -> bool:
        """Start and claim what fits, or advance the shutdown; True when the loop should end."""
        if self.stopping:
            if now >= (self._stop_deadline or now):
                self._release_in_flight()
            if self._claim_in_doubt and now >= self._db_retry_at:
                self._take_up_unheld()  # to give them back with the rest
            self._take_back()
            self._release_claimed()
            return not self.pool.busy
        self._dispatch()
        limit = self._claim_limit(now)
        if limit and now >= self._next_poll:
            return self._claim_and_submit(now, limit) == 0 and self._burst_done()
        return False

    def _claim_limit(self, now: float) -> int:
        """How many runs to claim now: the free slots, plus a few ahead when runs finish quickly."""
        free, held, ahead = self.pool.free, len(self._claimed), self._pace.ahead(now)
        if free > held or 2 * held < ahead:
            return max(0, free + ahead - held)
        return 0

    def _dispatch(self) -> None:
        """Start runs claimed ahead in free executors; when runs are short, also queue one behind
        each running run, so that its executor starts it the moment the first ends."""
        self._take_back()
        self._submit(self.pool.free, queue=False)
        if self._claimed and self.pool.queueable and self._pace.ahead(time.monotonic()):
            self._submit(self.pool.queueable, queue=True)

    def _submit(self, slots: int, *, queue: bool) -> None:
        for _ in range(min(slots, len(self._claimed))):
            run = self._claimed.popleft()
            self.pool.submit(run, queue=queue)
            self.log.info("Run started", **_run_fields(run))

    def _take_back(self) -> None:
        """Runs an executor returned unstarted (it was killed, crashed or told to stop) go first."""
        if self.pool.returned:
            self._claimed.extendleft(reversed(self.pool.returned))
            self.pool.returned.clear()

    def _burst_done(self) -> bool:
        return self.options.burst and not self.pool.busy and not self._unwritten and not self._claimed

    def _claim_and_submit(self, now: float, limit: int) -> int | None:
        if now < self._db_retry_at:
            return None
        if self.options.burst:
            # Burst mode exits when nothing is runnable; never let it wait a poll interval.
            self._next_poll = now
        else:
            self._next_poll = now + self.settings.POLL_INTERVAL.total_seconds()
        self.log.debug("Worker polling...")
        if self._claim_in_doubt and not self._take_up_unheld():
            return None
        # Outcomes waiting to be written go in the same transaction: one commit for both.
        successes, transitions = self._successes, self._transitions
        done = self._db(lambda conn: self._exchange(conn, successes, transitions, limit), atomic=False)
        if done is None:
            self._claim_in_doubt = True
            self._outcomes_in_doubt |= bool(successes or transitions)
            return None
        owned, claimed = done
        self._written(successes, transitions, owned)
        for run in claimed:
            self.metrics.run_claimed(run)
        self._claimed.extend(claimed)
        self._dispatch()
        if claimed:
            self._next_poll = now  # found work: poll again as soon as a slot is free
        return len(claimed)

    def _take_up_unheld(self) -> bool:
        """After a failed turn: the connection may have been cut after its COMMIT, so runs it
        claimed are this worker's without it knowing. They are taken up, as if just claimed,
        instead of waiting for the rescuer; False while the database is still away."""
        self._take_back()
        held = {run.id for run in [*self.pool.busy, *self._claimed]} | set(self._unwritten)
        unheld = self._db(lambda conn: queries.unheld_runs(conn, self.options.worker_id, held), atomic=False)
        if unheld is None:
            return False
        self._claim_in_doubt = False
        for run in unheld:
            self.log.warning("Run claimed as the connection was lost, taken up", **_run_fields(run))
            self.metrics.run_claimed(run)
        self._claimed.extend(unheld)
        return True

    def _exchange(
        self, conn: Connection, successes: list[Success], transitions: list[Transition], limit: int = 0
    ) -> tuple[set[int], list[ClaimedRun]]:
        return queries.exchange(
            conn,
            worker_id=self.options.worker_id,
            successes=successes,
            transitions=transitions,
            limit=limit,
            defaults=self.defaults,
            version=self.version,
        )

    def _wait(self, now: float) -> None:
        timeout = min(
            self._heartbeat.remaining(now),
            self._rescue.remaining(now),
            self._report.remaining(now),
            1.0,
        )
        if self.pool.free and not self.stopping:
            timeout = min(timeout, max(0.0, self._next_poll - now))
        if self.stopping and self._stop_deadline is not None:
            timeout = min(timeout, max(0.0, self._stop_deadline - now))
        if self._unwritten and self._db_retry_at > now:
            timeout = min(timeout, self._db_retry_at - now)  # outcomes wait for the database
        if self._successes or self._transitions:
            timeout = min(timeout, self._flush_policy.remaining(now))
        ready = wait([*self.pool.connections(), self._wake_r], timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        for outcome in self.pool.collect(ready):
            self._record(outcome)
        if not self.stopping:
            self._dispatch()  # keep the executors busy while the loop talks to the database

    def _after_wait(self, now: float) -> None:
        for outcome in self.pool.expire():
            self._record(outcome)
        waiting = len(self._successes) + len(self._transitions)
        idle = self.stopping or not (self.pool.busy or self._claimed)
        if self._flush_policy.due(now, waiting, idle=idle):
            self._flush()
        if self._heartbeat.ready(now):
            self._beat()
        if self._rescue.ready(now) and not self.stopping:
            recovered = self._db(self.rescuer.run_once)
            self.metrics.runs_recovered(row.pipeline for row in recovered or [])
            self._prune()
            self._db(self.scheduler.run_once)
        if self._report.ready(now):
            self.log.info("Worker Metrics Report", **self.stats.report(now))

    def _prune(self) -> None:
        # Bounded so a large backlog of expired runs never stalls claiming for long; the next
        # pass continues where this one stopped.
        for _ in range(PRUNE_BATCHES_PER_PASS):
            pruned = self._db(self.rescuer.prune_once)
            if pruned is None or pruned < self.rescuer.batch:
                return

    # --- outcomes ----------------------------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        run = outcome.run
        fields = _run_fields(run)
        now = time.monotonic()
        self._pace.finished(now)
        self._flush_policy.added(now)
        if outcome.failure is None:
            self._successes.append(Success(run.id, run.attempt, outcome.result_json or "null"))
            self.stats.record(success=True, duration=outcome.duration)
            self.metrics.attempt_ended(run.pipeline, "succeeded", outcome.duration)
            self.log.info("Run succeeded", duration_ms=round(outcome.duration * 1000), **fields)
        else:
            transition = transition_for(run, outcome.failure, self.backoff)
            self._transitions.append(transition)
            if outcome.failure.snooze is None:
                self.stats.record(success=False, duration=outcome.duration)
                self.metrics.attempt_ended(run.pipeline, str(transition.status), outcome.duration)
            self._log_failure(outcome.failure, transition, fields)
        self._unwritten[run.id] = run

    def _log_failure(self, failure: Failure, t: Transition, fields: dict[str, Any]) -> None:
        if failure.snooze is not None:
            self.log.info("Run snoozed", delay_s=failure.snooze, **fields)
            return
        level = "warning" if t.status == "pending" else "error"
        getattr(self.log, level)(
            "Run failed" if t.status != "pending" else "Run will be retried",
            kind=str(failure.kind),
            error=failure.summary,
            status=str(t.status),
            retry_in_s=round(t.delay, 3) if t.status == "pending" else None,
            **fields,
        )

    def _flush(self) -> None:
        if not (self._successes or self._transitions) or time.monotonic() < self._db_retry_at:
            return
        self._write_outcomes()

    def _write_outcomes(self) -> None:
        successes, transitions = self._successes, self._transitions
        done = self._db(lambda conn: self._exchange(conn, successes, transitions), atomic=False)
        if done is None:
            self._outcomes_in_doubt = True
        else:
            self._written(successes, transitions, done[0])

    def _written(self, successes: list[Success], transitions: list[Transition], owned: set[int]) -> None:
        """Forget outcomes now in the database; warn about those that were no longer ours."""
        ids = {s.id for s in successes} | {t.id for t in transitions}
        rejected = ids - owned
        landed = self._landed_earlier(successes, transitions, rejected)
        self._outcomes_in_doubt = False
        for run_id in ids:
            run = self._unwritten.pop(run_id, None)
            fields = _run_fields(run) if run is not None else {"run_id": run_id}
            if run_id in landed:
                self.log.info("Outcome was already written, by the turn whose reply was lost", **fields)
            elif run_id in rejected:
                self.log.warning("Late outcome rejected: the run is no longer owned by this worker", **fields)
        self._successes = self._successes[len(successes) :]
        self._transitions = self._transitions[len(transitions) :]
        if not (self._successes or self._transitions):
            self._flush_policy.written()

    def _landed_earlier(
        self, successes: list[Success], transitions: list[Transition], rejected: set[int]
    ) -> set[int]:
        """After a turn whose reply was lost, its outcomes (successes and transitions alike) may
        be in the database already, and writing them again is refused by the fence: those are
        not late, only written once."""
        if not (self._outcomes_in_doubt and rejected):
            return set()
        mine = [s for s in successes if s.id in rejected], [t for t in transitions if t.id in rejected]
        worker_id = self.options.worker_id
        return self._db(lambda conn: queries.landed(conn, worker_id, *mine)) or set()

    def _release_claimed(self) -> None:
        """Give back the runs claimed ahead: pending again at once, their attempt not counted."""
        if not self._claimed:
            return
        self.log.info("Runs claimed ahead given back at shutdown", runs=len(self._claimed))
        for run in self._claimed:
            self._transitions.append(release(run))
            self._unwritten[run.id] = run
        self._claimed.clear()
        self._flush_policy.added(time.monotonic())

    def _release_in_flight(self) -> None:
        # What ended before the grace ran out may wait in its pipe, unread while the loop waited
        # on the database: recorded first, or a finished run would be released and run again.
        for outcome in self.pool.collect(wait(self.pool.connections(), 0)):
            self._record(outcome)
        lost = Failure(ErrorKind.INTERRUPTED, "Shutdown", "worker shut down")
        for outcome in self.pool.stop_all(lost):
            self._transitions.append(release(outcome.run))
            self._unwritten[outcome.run.id] = outcome.run
            self._flush_policy.added(time.monotonic())
            self.log.warning("Run released at shutdown", **_run_fields(outcome.run))

    # --- heartbeat ---------------------------------------------------------------------------

    def _beat(self) -> None:
        # A run whose outcome waits to be written is still this worker's: once the database is
        # back, the rescuer must not recover it before the worker's next write (its backoff).
        held = {run.id: run.attempt for run in [*self.pool.busy, *self._claimed, *self._unwritten.values()]}
        still_ours = self._db(
            lambda conn: queries.heartbeat(conn, self.options.worker_id, held), atomic=False
        )
        if still_ours is None:
            return
        self._last_beat = time.monotonic()
        lost = set(held) - still_ours
        for run_id in lost:
            # Cancelled, or rescued by another worker while this one was unreachable.
            gone = Failure(ErrorKind.INTERRUPTED, "LeaseLost", "run is no longer owned")
            stopped = self.pool.stop(run_id, gone)
            if stopped is not None:
                self.log.warning("Run stopped: cancelled or taken over elsewhere", **_run_fields(stopped))
        self._take_back()
        if lost and self._claimed:
            self._claimed = deque(run for run in self._claimed if run.id not in lost)

    # --- database access ---------------------------------------------------------------------

    def _db(self, action: Callable[[Connection], T], *, atomic: bool = True) -> T | None:
        """Run ``action`` in a short transaction; on database trouble log, back off, return None.

        Everything runs on one connection the worker keeps, in autocommit: a transaction is an
        explicit BEGIN ... COMMIT on it, which saves the pool check-out and liveness ping of each
        ``engine.begin()``. With ``atomic=False`` each statement of ``action`` commits on its own:
        the heartbeat is a single statement, and queries.exchange sends its own BEGIN and COMMIT
        with its statements, in one round trip.
        """
        now = time.monotonic()
        try:
            result = self._run(action, atomic)
        except SQLAlchemyError as exc:
            self._conn.drop()
            self._db_failures += 1
            # Capped at the poll interval, so work is noticed within one poll once the database is back.
            delay = min(self.settings.POLL_INTERVAL.total_seconds(), 0.25 * 2**self._db_failures)
            self._db_retry_at = now + delay
            self.log.error("Database error; will retry", error=_one_line(exc), retry_in_s=round(delay, 2))
            return None
        except BaseException:
            self._conn.drop()  # closing it ends what it began: no transaction left holding locks
            raise
        if self._db_failures:
            self.log.info("Database is reachable again", after_failures=self._db_failures)
        self._db_failures = 0
        self._db_retry_at = 0.0
        return result

    # --- observability (read from the HTTP thread) --------------------------------------------

    def _queue_depth(self) -> list[queries.QueueDepth]:
        with self.engine.connect() as conn:
            return queries.queue_depth(conn)

    def health(self) -> health.Health:
        """The fleet's health, plus this worker's own heartbeat: silent past STALE_AFTER is an error."""
        fleet = self._fleet_health.get()
        problems = list(fleet.problems)
        silent = time.monotonic() - self._last_beat
        if silent > self.settings.stale_after.total_seconds():
            problems.append(
                health.Problem(health.Status.ERROR, f"this worker's last heartbeat was {silent:.0f}s ago")
            )
        return health.Health(problems, self._last_activity(), fleet.stuck_runs)

    def _last_activity(self) -> datetime | None:
        if self.stats.last_activity is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=time.monotonic() - self.stats.last_activity)

    def _run(self, action: Callable[[Connection], T], atomic: bool) -> T:
        conn = self._conn.get()
        # The whole action has a deadline: a database that stops answering must not hold the
        # loop (its outcomes, heartbeats and signals) for longer than that.
        with DEADLINES.bound(_socket(conn), self._call_deadline()):
            if not atomic:
                return action(conn)
            conn.exec_driver_sql("BEGIN")
            try:
                result = action(conn)
            except BaseException:
                self._conn.drop()  # closing the connection rolls back what it began
                raise
            conn.exec_driver_sql("COMMIT")
            return result

    def _call_deadline(self) -> float:
        """A stopping worker's calls end by its last try at writing (at least 1 s each), so it is
        done within SHUTDOWN_GRACE + SHUTDOWN_WRITE_TIMEOUT and a few seconds (supervisord.conf)."""
        left = self._writes_until - time.monotonic()
        return min(self.database.deadline, max(1.0, left))

    def _sleep(self, seconds: float) -> None:
        if wait([self._wake_r], max(0.0, seconds)):
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)  # else every later sleep would end at once

    def _finish(self) -> None:
        try:
            self._write_last()
        except Exception as exc:  # the error that ended the loop, met again: the executors still go
            self.log.error("Outcomes could not be written", error=_one_line(exc))
        finally:
            try:
                self._save_unwritten()
            finally:
                self.pool.close()
                self._conn.drop()
                self.engine.dispose()
        self.log.info("Worker stopped", **self.stats.report())

    def _write_last(self) -> None:
        """Keep trying, with the loop's backoff, until SHUTDOWN_WRITE_TIMEOUT after the grace
        (after the loop ended, when the worker was not stopped): the outcomes held are the only
        record of what those runs did."""
        if not self.stopping:
            self._writes_until = time.monotonic() + self.settings.SHUTDOWN_WRITE_TIMEOUT.total_seconds()
        tried = False
        while self._successes or self._transitions:
            now = time.monotonic()
            if tried and now >= self._writes_until:  # a second signal moves it to now
                break
            self._sleep(min(self._db_retry_at, self._writes_until) - now)
            self._write_outcomes()
            tried = True
        if not self._unwritten:
            # Marked stopped, its runs would be recovered at once: not while outcomes are held.
            self._db(lambda conn: registration.stop(conn, self._registration()))

    def _save_unwritten(self) -> None:
        """Save what could not be written, for the next worker or ``orbit outcomes apply``; the
        worker then exits 1."""
        if not (self._successes or self._transitions):
            return
        worker_id = self.options.worker_id
        path = spool.path_for(self.settings.DATA_DIR, worker_id)
        outcomes: list[Success | Transition] = [*self._successes, *self._transitions]
        items = [spool.Unwritten(worker_id, self._pipeline_of(o.id), o) for o in outcomes]
        self._exit_status = 1
        for item in items:
            self.log.error(
                "Outcome could not be written: saved for later",
                run_id=item.outcome.id,
                pipeline=item.pipeline,
                attempt=item.outcome.attempt,
                outcome=item.status,
                file=str(path),
            )
        try:
            spool.save(path, items)
        except (OSError, TypeError, ValueError) as exc:  # the log lines above are then all there is
            self.log.error("Outcomes could not be saved", error=_one_line(exc), file=str(path))
            return
        self.log.error(
            "Outcomes could not be written: apply them with `orbit outcomes apply` once the database"
            " answers (the next worker started with this DATA_DIR does it)",
            outcomes=len(items),
            file=str(path),
        )

    def _pipeline_of(self, run_id: int) -> str:
        run = self._unwritten.get(run_id)
        return "" if run is None else run.pipeline

    def _apply_spooled(self) -> None:
        """Apply the outcomes a worker stopped during an outage saved in this DATA_DIR, before
        this one registers (the sooner, the likelier their runs are not recovered meanwhile)."""
        for path in spool.files(self.settings.DATA_DIR):
            try:
                applied = spool.apply_file(self.engine, path)
            except (spool.SpoolError, OSError, SQLAlchemyError) as exc:
                self.log.error("Saved outcomes not applied", file=str(path), error=_one_line(exc))
                continue
            for done in applied or []:
                o = done.item.outcome
                level = "info" if done.result != "refused" else "warning"
                getattr(self.log, level)(
                    f"Saved outcome {done.result}",
                    run_now=done.now,
                    run_id=o.id,
                    pipeline=done.item.pipeline,
                    attempt=o.attempt,
                    outcome=done.item.status,
                    saved_by=done.item.worker_id,
                )


def _socket(conn: Connection) -> int:
    return int(conn.connection.driver_connection.fileno())  # type: ignore[union-attr]


def _run_fields(run: ClaimedRun) -> dict[str, Any]:
    return {"run_id": run.id, "pipeline": run.pipeline, "attempt": run.attempt}


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- entry point ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, help="runs at once (WORKER_CONCURRENCY)")
    parser.add_argument("--worker-id", help="this worker's id (WORKER_ID, default host:pid)")
    parser.add_argument("--pipelines", metavar="GLOB", help="only these pipelines (PIPELINE_FILTER)")
    parser.add_argument(
        "--burst", action="store_true", help="exit 0 once nothing is runnable (for cron and tests)"
    )


def start(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name, value in (
            ("WORKER_CONCURRENCY", args.concurrency),
            ("WORKER_ID", args.worker_id),
            ("PIPELINE_FILTER", args.pipelines),
        )
        if value is not None
    }
    settings = load_settings_or_exit(**overrides)
    logs.configure(
        settings.LOG_LEVEL,
        settings.LOG_FORMAT,
        settings.LOGS_DIR,
        settings.LOG_MAX_BYTES,
        settings.LOG_BACKUPS,
        settings.log_file_stem,
    )
    try:
        return build(settings, burst=args.burst).run()
    except (RegistryError, HttpServerError, WorkerIdInUse) as exc:
        return _refuse(exc, status=2)
    except (DatabaseError, ExecutorError) as exc:
        return _refuse(exc, status=1)
    except Exception as exc:
        # Whatever the loop does not handle ends the worker, for its supervisor to start it again
        # (its runs are rescued once its heartbeat stops): retrying the same turn would only fail
        # again, holding its runs.
        log.critical("Worker stopped by an unexpected error", exc_info=True)
        print(
            f"orbit: worker stopped by an unexpected error: {type(exc).__name__}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 1


def _refuse(exc: Exception, *, status: int) -> int:
    log.error(str(exc))
    print(f"orbit: {exc}", file=sys.stderr)
    return status


def build(settings: Settings, *, burst: bool = False) -> Worker:
    """A ready worker: pipelines loaded, database resolved and its schema checked."""
    loaded = discover(settings.pipeline_modules)
    pipelines = {name: p for name, p in loaded.items() if settings.matches_filter(name)}
    for name in sorted(pipelines):
        log.info(f"Loaded pipeline: {name}")
    if not pipelines:
        raise RegistryError(
            f"no pipeline matches PIPELINE_FILTER={settings.PIPELINE_FILTER!r}: nothing to run"
        )
    database = connect(settings)
    options = Options(settings.WORKER_CONCURRENCY, settings.WORKER_ID, settings.PIPELINE_FILTER, burst)
    return Worker(settings, database, pipelines, options)


def connect(settings: Settings) -> Database:
    """Resolve the database, check it answers and that its schema is current."""
    try:
        database = resolve(settings)
    except Exception as exc:
        raise DatabaseError(f"cannot start the embedded database: {_one_line(exc)}") from None
    log.info("Using database", url=database.masked, embedded=database.embedded)
    if database.embedded:
        migrate(database.direct_url)
    engine = database.engine(pool_size=1)
    try:
        check_schema(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot reach the database {database.masked}: {_one_line(exc)}") from None
    finally:
        engine.dispose()
    return database


def main(argv: list[str] | None = None) -> int:
    parser = arguments.Parser(prog="python -m app.worker", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return start(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
