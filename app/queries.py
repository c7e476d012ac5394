"""Every SQL statement of the queue, as bound-parameter statements with small typed helpers.

Each state change is written "set X where the run is still in state Y (and still ours)", so a
late, duplicate or zombie actor changes nothing. Lease arithmetic uses the database clock only.
The statements of the hot paths (enqueue, claim, outcomes) are psycopg strings (``%(name)s``) run
on the driver under the SQLAlchemy connection (see ``_driver``); the others are ``text()``.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Connection, Row, text
from sqlalchemy.exc import DBAPIError

from app.states import (
    FINAL_OUTCOMES,
    FINISHED,
    LIVE,
    RESUMABLE,
    RETRIES_SQL,
    ErrorKind,
    RunStatus,
    StepStatus,
    sql_list,
    sql_literal,
)

# States as SQL, from app.states: no statement spells a state or the retry rule by hand.
_PENDING = sql_literal(RunStatus.PENDING)
_RUNNING = sql_literal(RunStatus.RUNNING)
_SUCCEEDED = sql_literal(RunStatus.SUCCEEDED)
_FAILED = sql_literal(RunStatus.FAILED)
_CANCELLED = sql_literal(RunStatus.CANCELLED)
_LIVE = sql_list(LIVE)
_FINISHED = sql_list(FINISHED)
_FINAL_OUTCOMES = sql_list(FINAL_OUTCOMES)
_RESUMABLE = sql_list(RESUMABLE)
_STEP_SUCCEEDED = sql_literal(StepStatus.SUCCEEDED)
_INTERRUPTED_KIND = sql_literal(ErrorKind.INTERRUPTED)

_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
# JSONEncoder.encode builds a new C encoder on every call, which costs four times encoding a small
# object; this one is built once. Without a circular-reference check, a cycle ends in the
# RecursionError that deep nesting raises too.
_C_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def to_json(value: Any) -> str:
    """JSON text for a jsonb parameter; rejects what Postgres cannot store (NaN, NUL, lone surrogates)."""
    encoded = "".join(_C_ENCODE(value, 0)) if _C_ENCODE is not None else _ENCODER.encode(value)
    if "\\u0000" in encoded:
        raise ValueError("JSON text cannot contain the NUL character (\\u0000)")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("JSON text must be valid Unicode (a lone surrogate, or undecodable input)") from None
    return encoded


@contextmanager
def _driver(conn: Connection) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection under ``conn``, for statements run often enough that SQLAlchemy's
    execution (about 80 µs of CPU each, measured) would cost a third of an enqueue. The transaction
    is begun as ``conn.execute`` would begin it (in autocommit there is none to begin), and errors
    are raised as SQLAlchemy's."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    if not driver.autocommit and not conn.in_transaction():
        conn.begin()
    try:
        yield driver
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc


# --- enqueue -------------------------------------------------------------------------------------

_INSERT_RUN = f"""
    INSERT INTO runs (pipeline, params, priority, run_at, max_attempts, timeout, key)
    VALUES (%(pipeline)s, CAST(%(params)s AS jsonb), %(priority)s,
            COALESCE(CAST(%(run_at)s AS timestamptz), now() + make_interval(secs => %(delay)s)),
            %(max_attempts)s, make_interval(secs => CAST(%(timeout)s AS double precision)), %(key)s)
    ON CONFLICT (key) WHERE key IS NOT NULL AND status IN {_LIVE} DO NOTHING
    RETURNING id
"""

_LIVE_RUN_BY_KEY = f"""
    SELECT id FROM runs WHERE key = %(key)s AND status IN {_LIVE}
"""

# Many runs go in with COPY, about three times as fast as a multi-row INSERT: their ids are taken
# from the sequence first (so they can be returned, in order), and run_at is the transaction's
# now() plus each delay, as the single INSERT computes it. COPY fires the INSERT trigger once.
# The sequence is looked up once (an InitPlan): per row, the lookup cost 3 µs, six times nextval.
_RESERVE_IDS = """
    SELECT now(),
           ARRAY(SELECT nextval((SELECT CAST(pg_get_serial_sequence('runs', 'id') AS regclass)))
                 FROM generate_series(1, %(count)s))
"""


# Columns insert_runs may leave out: how to read a NewRun's value (run_at: its time and delay),
# and what the table fills in when it is left out. itemgetter reads thousands of rows in C.
_OPTIONAL_COLUMNS: dict[str, tuple[Any, Any]] = {
    "priority": (itemgetter(2), 0),
    "max_attempts": (itemgetter(5), None),
    "run_at": (itemgetter(4, 3), (None, 0.0)),
}


class NewRun(NamedTuple):
    """A validated run, ready to insert (a tuple: enqueue_many builds thousands)."""

    pipeline: str
    params: Mapping[str, Any]
    priority: int = 0
    delay: float = 0.0
    run_at: datetime | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    key: str | None = None
    params_json: str = ""  # params already encoded by to_json (encoded here when empty)

    @property
    def encoded_params(self) -> str:
        return self.params_json or to_json(self.params)


def insert_run(conn: Connection, run: NewRun) -> int:
    """Insert one run; with a key that is live already, return the live run's id."""
    values = {
        "pipeline": run.pipeline,
        "params": run.encoded_params,
        "priority": run.priority,
        "run_at": run.run_at,
        "delay": run.delay,
        "max_attempts": run.max_attempts,
        "timeout": run.timeout,
        "key": run.key,
    }
    with _driver(conn) as driver:
        while True:
            inserted = driver.execute(_INSERT_RUN, values).fetchone()
            if inserted is not None:
                return int(inserted[0])
            # The key is held by a live run; it may finish before we read it, then insert again.
            existing = driver.execute(_LIVE_RUN_BY_KEY, {"key": run.key}).fetchone()
            if existing is not None:
                return int(existing[0])


_PIPELINE = attrgetter("pipeline")
_ENCODED_PARAMS = attrgetter("encoded_params")


def insert_runs(conn: Connection, runs: Sequence[NewRun]) -> list[int]:
    """Insert many runs with one COPY, in the caller's transaction (no keys, no timeouts: use
    insert_run for those); returns their ids in order."""
    if not runs:
        return []
    # A column every run leaves at the table's default is left out of the COPY: the default is
    # what those runs asked for, and each value written costs time per row (a run_at about 2 µs).
    written = {
        column: list(map(value_of, runs))
        for column, (value_of, default) in _OPTIONAL_COLUMNS.items()
        if set(map(value_of, runs)) != {default}
    }
    with _driver(conn) as driver:
        reserved = driver.execute(_RESERVE_IDS, {"count": len(runs)}).fetchone()
        assert reserved is not None
        now, ids = reserved
        if "run_at" in written:
            written["run_at"] = [at or now + timedelta(seconds=delay) for at, delay in written["run_at"]]
        names = ", ".join(["id", "pipeline", "params", *written])
        rows = zip(ids, map(_PIPELINE, runs), map(_ENCODED_PARAMS, runs), *written.values(), strict=True)
        with driver.cursor() as cursor, cursor.copy(f"COPY runs ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return list(ids)


# --- claim ---------------------------------------------------------------------------------------

# A ClaimedRun's fields, in order, from a row of runs (or of the claim's RETURNING).
_CLAIMED_RUN = """
    SELECT id, pipeline, params::text AS params_json, attempt, max_attempts,
           EXTRACT(EPOCH FROM timeout)::double precision AS timeout_s,
           GREATEST(EXTRACT(EPOCH FROM now() - run_at), 0)::double precision AS waited_s
"""

# A claim reads each of the worker's pipelines in its own range of runs_pending_idx (pipeline,
# then claim order), locks at most the batch size there, and keeps the first runs of them all in
# claim order. Runs of other pipelines are never read: a backlog of a paused pipeline, or of one
# another fleet runs, costs a claim nothing (one index in claim order for all pipelines, read
# past them, took 34 ms a claim behind 100,000 of them; this way 1.1 ms, measured). Runs locked in
# one range but not kept are free again when the claim commits. Paused pipelines are left out
# here, so every worker obeys a pause on its next poll without being told; the unpaused pipelines
# are worked out once per claim (an InitPlan). The CTE fences the planner: the LIMIT is applied
# before the UPDATE, so a claim never takes more rows than asked. The claimed runs come back in
# claim order (a worker starts runs it claimed ahead in that order). Defaults of the pipeline are
# written into the row at claim time, so SQL readers (and the rescuer, which has no registry) see
# the effective values.
_CLAIM = (
    f"""
    WITH next AS (
        SELECT candidate.id
        FROM unnest(ARRAY(
                 SELECT name FROM unnest(CAST(%(pipelines)s AS text[])) AS name
                 WHERE NOT EXISTS (SELECT 1 FROM pauses p WHERE name LIKE p.like_pattern))) AS pipeline
        CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM runs
            WHERE status = {_PENDING} AND run_at <= now() AND runs.pipeline = pipeline.pipeline
            ORDER BY priority DESC, run_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS candidate
        ORDER BY candidate.priority DESC, candidate.run_at, candidate.id
        LIMIT %(limit)s
    )
    , claimed AS (
        UPDATE runs r
        SET status = {_RUNNING}, attempt = r.attempt + 1, worker_id = %(worker_id)s,
            started_at = now(), heartbeat_at = now(), finished_at = NULL, code_version = %(version)s,
            max_attempts = COALESCE(r.max_attempts, CAST(CAST(%(defaults)s AS jsonb) #>> ARRAY[r.pipeline, 'max_attempts'] AS int)),
            timeout = COALESCE(r.timeout, make_interval(secs => CAST(CAST(%(defaults)s AS jsonb) #>> ARRAY[r.pipeline, 'timeout_s'] AS double precision)))
        WHERE r.id = ANY(ARRAY(SELECT id FROM next))
        RETURNING r.id, r.pipeline, r.params, r.attempt, r.max_attempts, r.timeout, r.priority, r.run_at
    )"""
    + _CLAIMED_RUN
    + """
    FROM claimed
    ORDER BY priority DESC, run_at, id
"""
)


# Each pipeline's (max_attempts, timeout in seconds); the claim reads them by name.
Defaults = Mapping[str, tuple[int, float]]


def _claim_params(worker_id: str, limit: int, defaults: Defaults, version: str) -> dict[str, Any]:
    named = {
        pipeline: {"max_attempts": max_attempts, "timeout_s": timeout_s}
        for pipeline, (max_attempts, timeout_s) in defaults.items()
    }
    return {
        "pipelines": list(defaults),
        "limit": limit,
        "worker_id": worker_id,
        "defaults": json.dumps(named),
        "version": version,
    }


# Each pipeline's range must be read from runs_pending_idx in claim order, stopping at the batch
# size, whatever the table's statistics say. Right after a burst of enqueues they are stale
# (autovacuum analyzes within a minute), and the planner then picks, by measurement on
# PostgreSQL 15 over 40 mixes of history, backlog and stale statistics: a bitmap scan that reads
# and sorts every pending run of the range (9 ms a claim with 10,000 pending, against 0.1 ms),
# or a sequential scan of the whole table, for the range or for the UPDATE's join. Both are
# forbidden for the rest of the claiming transaction (callers claim last); every other node has
# an allowed path (the pauses through pauses_like_idx, the UPDATE through the primary key), so
# the plan keeps its real, small cost. A forbidden node that has no alternative is still taken,
# with a cost of 10^10 that trips the JIT: disabling sorting did that (151 ms of compilation
# for a 0.2 ms claim on Debian's PostgreSQL 15, whose JIT is on), as any other knob would. The
# JIT is switched off for the claim besides: a claim of many runs over many pipelines can be
# estimated near jit_above_cost on honest costs, and compiling never pays for a query of 1 ms.
_CLAIM_PLAN = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true),"
    " set_config('jit', 'off', true)"
)


@dataclass(frozen=True)
class ClaimedRun:
    id: int
    pipeline: str
    # Decoded by the executor, not here: a row written around the API (nested too deeply, say)
    # then fails that run alone instead of failing every claim that returns it.
    params_json: str
    attempt: int
    max_attempts: int
    timeout_s: float
    waited_s: float = 0.0  # from when the run was due to its claim


def _send_claim(
    driver: psycopg.Connection[Any], worker_id: str, limit: int, defaults: Defaults, version: str
) -> psycopg.Cursor[Any]:
    driver.execute(_CLAIM_PLAN)
    return driver.execute(_CLAIM, _claim_params(worker_id, limit, defaults, version))


# Runs a worker owns but does not hold: a turn whose claim committed while its reply was lost
# (the connection cut right after COMMIT). Same columns as the claim, in claim order.
_UNHELD = (
    _CLAIMED_RUN
    + f"""
    FROM runs
    WHERE status = {_RUNNING} AND worker_id = %(worker_id)s AND NOT (id = ANY(%(held)s))
    ORDER BY priority DESC, run_at, id
"""
)


def unheld_runs(conn: Connection, worker_id: str, held: Collection[int]) -> list[ClaimedRun]:
    """Running runs of ``worker_id`` other than ``held``: claimed, but the worker never learnt it."""
    with _driver(conn) as driver:
        return _claimed(driver.execute(_UNHELD, {"worker_id": worker_id, "held": list(held)}))


def _claimed(cursor: psycopg.Cursor[Any]) -> list[ClaimedRun]:
    return [ClaimedRun(*row) for row in cursor.fetchall()]


# --- outcomes (all fenced on run id + status running + worker + attempt) --------------------------

_SUCCEED_MANY = f"""
    UPDATE runs r
    SET status = {_SUCCEEDED}, result = v.result, finished_at = now(), error = NULL
    FROM unnest(CAST(%(ids)s AS bigint[]), CAST(%(attempts)s AS int[]), CAST(%(results)s AS jsonb[]))
         AS v(id, attempt, result)
    WHERE r.id = v.id AND r.attempt = v.attempt AND r.status = {_RUNNING} AND r.worker_id = %(worker_id)s
    RETURNING r.id
"""

_FAIL = f"""
    UPDATE runs
    SET status = %(status)s,
        run_at = CASE WHEN %(status)s = {_PENDING} THEN now() + make_interval(secs => %(delay)s) ELSE run_at END,
        finished_at = CASE WHEN %(status)s = {_PENDING} THEN NULL ELSE now() END,
        attempt = attempt - %(refund)s,
        error = %(error)s,
        errors = CASE WHEN CAST(%(entry)s AS jsonb) IS NULL THEN errors
                      ELSE errors || jsonb_build_array(CAST(%(entry)s AS jsonb)
                                     || jsonb_build_object('at', now())) END
    WHERE id = %(id)s AND attempt = %(attempt)s AND status = {_RUNNING} AND worker_id = %(worker_id)s
    RETURNING id
"""


@dataclass(frozen=True)
class Success:
    id: int
    attempt: int
    result_json: str


# What a turn whose reply was lost may have written: the state its own fenced write sets, by
# this worker, at this attempt. The rescuer's write differs (its error says "interrupted"), and so
# does a later claim (another attempt, or another worker).
_LANDED = text("""
    SELECT r.id FROM runs r
    JOIN unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[]), CAST(:statuses AS text[]),
                CAST(:errors AS text[])) AS v(id, attempt, status, error) ON r.id = v.id
    WHERE r.attempt = v.attempt AND r.status = v.status AND r.worker_id = :worker_id
      AND r.error IS NOT DISTINCT FROM v.error
""")


def landed(
    conn: Connection, worker_id: str, successes: Sequence[Success], transitions: Sequence[Transition] = ()
) -> set[int]:
    """Which of these outcomes are in the database already, written by ``worker_id`` for that
    attempt: only that worker's fenced write can have left the run so."""
    ids = [s.id for s in successes] + [t.id for t in transitions]
    attempts = [s.attempt for s in successes] + [t.attempt - int(t.refund) for t in transitions]
    statuses = [str(RunStatus.SUCCEEDED)] * len(successes) + [str(t.status) for t in transitions]
    errors = [None] * len(successes) + [t.error for t in transitions]
    params = {
        "ids": ids,
        "attempts": attempts,
        "statuses": statuses,
        "errors": errors,
        "worker_id": worker_id,
    }
    return set(conn.execute(_LANDED, params).scalars())


def _send_successes(
    driver: psycopg.Connection[Any], worker_id: str, outcomes: Sequence[Success]
) -> psycopg.Cursor[Any]:
    params = {
        "ids": [o.id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "results": [o.result_json for o in outcomes],
        "worker_id": worker_id,
    }
    return driver.execute(_SUCCEED_MANY, params)


def _ids(cursor: psycopg.Cursor[Any]) -> set[int]:
    return {int(row[0]) for row in cursor.fetchall()}


@dataclass(frozen=True)
class Transition:
    """A non-success end of an attempt, already mapped to its next state by app.outcomes."""

    id: int
    attempt: int
    status: RunStatus
    delay: float = 0.0
    refund: bool = False
    error: str | None = None
    entry: dict[str, Any] | None = None


def _send_transition(driver: psycopg.Connection[Any], worker_id: str, t: Transition) -> psycopg.Cursor[Any]:
    params = {
        "id": t.id,
        "attempt": t.attempt,
        "status": str(t.status),
        "delay": t.delay,
        "refund": int(t.refund),
        "error": t.error,
        "entry": None if t.entry is None else to_json(t.entry),
        "worker_id": worker_id,
    }
    return driver.execute(_FAIL, params)


def exchange(
    conn: Connection,
    *,
    worker_id: str,
    successes: Sequence[Success] = (),
    transitions: Sequence[Transition] = (),
    limit: int = 0,
    defaults: Defaults | None = None,
    version: str = "",
) -> tuple[set[int], list[ClaimedRun]]:
    """A worker's whole turn in one transaction and one round trip: write its outcomes, then
    claim up to ``limit`` runs. Returns the ids whose outcome was written (the rest were no longer
    ours) and the runs claimed.

    The statements go out together in psycopg's pipeline mode: on a 2-core machine each round
    trip costs a wake-up of both processes, several times the statements themselves. On a
    connection in autocommit and outside a transaction (the worker's kept one) the turn is its own
    transaction; otherwise it is part of the caller's.
    """
    with _driver(conn) as driver, driver.pipeline():
        own = driver.autocommit and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if own:
            driver.execute("BEGIN")
        written = [_send_successes(driver, worker_id, successes)] if successes else []
        written += [_send_transition(driver, worker_id, t) for t in transitions]
        claiming = _send_claim(driver, worker_id, limit, defaults or {}, version) if limit else None
        if own:
            driver.execute("COMMIT")
    owned = set().union(*(_ids(cursor) for cursor in written))
    return owned, [] if claiming is None else _claimed(claiming)


# --- heartbeats and the worker registry ------------------------------------------------------

# An id is taken over only from a process that is gone: stopped, silent for STALE_AFTER, or the
# one the caller found no longer running on its host (:gone_pid). Decided in the upsert itself, so
# two processes registering at once cannot both win.
_REGISTER_WORKER = text("""
    INSERT INTO workers (id, hostname, pid, concurrency, pipeline_filter, pipelines, version)
    VALUES (:id, :hostname, :pid, :concurrency, :pipeline_filter, :pipelines, :version)
    ON CONFLICT (id) DO UPDATE
    SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now(),
        stopped_at = NULL, concurrency = EXCLUDED.concurrency,
        pipeline_filter = EXCLUDED.pipeline_filter, pipelines = EXCLUDED.pipelines,
        version = EXCLUDED.version
    WHERE workers.stopped_at IS NOT NULL
       OR workers.heartbeat_at < now() - make_interval(secs => :stale)
       OR (workers.hostname = EXCLUDED.hostname AND workers.pid = CAST(:gone_pid AS integer))
    RETURNING id
""")

_REGISTERED_WORKER = text("""
    SELECT hostname, pid, stopped_at,
           EXTRACT(EPOCH FROM now() - heartbeat_at)::double precision AS heartbeat_age_s
    FROM workers WHERE id = :id
""")

_WORKER_HEARTBEAT = text("UPDATE workers SET heartbeat_at = now() WHERE id = :worker_id")

_RUNS_HEARTBEAT = text(f"""
    UPDATE runs r SET heartbeat_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS int[])) AS v(id, attempt)
    WHERE r.id = v.id AND r.attempt = v.attempt AND r.status = {_RUNNING} AND r.worker_id = :worker_id
    RETURNING r.id
""")

_STOP_WORKER = text("""
    UPDATE workers SET stopped_at = now(), heartbeat_at = now()
    WHERE id = :worker_id AND hostname = :hostname AND pid = :pid
""")

_PRUNE_WORKERS = text(f"""
    DELETE FROM workers
    WHERE COALESCE(stopped_at, heartbeat_at) < now() - make_interval(secs => :retention)
      AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.worker_id = workers.id AND runs.status = {_RUNNING})
""")


def register_worker(
    conn: Connection, *, stale_after: timedelta, gone_pid: int | None = None, **values: Any
) -> bool:
    """Register a worker process under ``values["id"]``; False when a live process holds that id."""
    params = {**values, "stale": stale_after.total_seconds(), "gone_pid": gone_pid}
    return conn.execute(_REGISTER_WORKER, params).first() is not None


def registered_worker(conn: Connection, worker_id: str) -> Row[Any] | None:
    """Who is registered under ``worker_id``: hostname, pid, stopped_at, heartbeat_age_s."""
    return conn.execute(_REGISTERED_WORKER, {"id": worker_id}).first()


def heartbeat(conn: Connection, worker_id: str, held: dict[int, int]) -> set[int]:
    """Beat for the worker and every run it holds (one statement); returns the runs still ours."""
    conn.execute(_WORKER_HEARTBEAT, {"worker_id": worker_id})
    if not held:
        return set()
    rows = conn.execute(
        _RUNS_HEARTBEAT,
        {"ids": list(held), "attempts": list(held.values()), "worker_id": worker_id},
    )
    return {int(i) for i in rows.scalars()}


def stop_worker(conn: Connection, worker_id: str, hostname: str, pid: int) -> None:
    """Mark this process's registration stopped (not another's that took the id over since)."""
    conn.execute(_STOP_WORKER, {"worker_id": worker_id, "hostname": hostname, "pid": pid})


def prune_workers(conn: Connection, retention: timedelta) -> int:
    return conn.execute(_PRUNE_WORKERS, {"retention": retention.total_seconds()}).rowcount


# --- interrupted runs, recovery, resume, cancel --------------------------------------------------

_INTERRUPTED_WHERE = f"""
    r.status = {_RUNNING}
    AND (r.heartbeat_at IS NULL OR r.heartbeat_at < now() - make_interval(secs => :stale)
         OR w.stopped_at IS NOT NULL)
"""

_INTERRUPTED = text(f"""
    SELECT r.id, r.pipeline, r.worker_id, r.attempt, r.max_attempts, r.heartbeat_at,
           (SELECT s.name FROM run_steps s
            WHERE s.run_id = r.id AND s.status = {_STEP_SUCCEEDED}
            ORDER BY s.position DESC LIMIT 1) AS last_step
    FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
    WHERE {_INTERRUPTED_WHERE}
    ORDER BY r.id
""")

# One transaction; SKIP LOCKED and the re-checked status make concurrent recoveries resume a
# run once. The interrupted attempt counts: a run that kills its worker every time ends failed.
_RECOVER = text(f"""
    WITH victims AS (
        SELECT r.id FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
        WHERE {_INTERRUPTED_WHERE} AND (CAST(:only_id AS bigint) IS NULL OR r.id = :only_id)
        FOR UPDATE OF r SKIP LOCKED
    )
    UPDATE runs r
    SET status = CASE WHEN {RETRIES_SQL} THEN {_PENDING} ELSE {_FAILED} END,
        run_at = now(),
        finished_at = CASE WHEN {RETRIES_SQL} THEN NULL ELSE now() END,
        error = 'interrupted: worker ' || r.worker_id || ' stopped heartbeating',
        errors = r.errors || jsonb_build_array(jsonb_build_object(
            'attempt', r.attempt, 'kind', {_INTERRUPTED_KIND}, 'type', 'WorkerLost',
            'message', 'worker ' || r.worker_id || ' stopped heartbeating', 'at', now()))
    FROM victims
    WHERE r.id = victims.id AND r.status = {_RUNNING}
    RETURNING r.id, r.pipeline, r.status, r.attempt, r.worker_id
""")

_RESUME_FINISHED = text(f"""
    UPDATE runs
    SET status = {_PENDING}, run_at = now(), finished_at = NULL,
        max_attempts = GREATEST(COALESCE(max_attempts, 1), attempt + 1)
    WHERE id = :id AND status IN {_RESUMABLE}
    RETURNING id, pipeline, status, attempt, worker_id
""")

_CANCEL = text(f"""
    WITH before AS (SELECT id, status FROM runs WHERE id = :id FOR UPDATE)
    UPDATE runs r SET status = {_CANCELLED}, finished_at = now(), error = 'cancelled'
    FROM before
    WHERE r.id = before.id AND before.status IN {_LIVE}
    RETURNING before.status AS previous
""")


def interrupted(conn: Connection, stale_after: timedelta) -> list[Row[Any]]:
    return list(conn.execute(_INTERRUPTED, {"stale": stale_after.total_seconds()}))


def recover(conn: Connection, stale_after: timedelta, only_id: int | None = None) -> list[Row[Any]]:
    params = {"stale": stale_after.total_seconds(), "only_id": only_id}
    return list(conn.execute(_RECOVER, params))


def resume_finished(conn: Connection, run_id: int) -> Row[Any] | None:
    return conn.execute(_RESUME_FINISHED, {"id": run_id}).first()


def cancel(conn: Connection, run_id: int) -> str | None:
    """Cancel a pending or running run; returns its previous status, None if nothing changed."""
    previous = conn.execute(_CANCEL, {"id": run_id}).scalar()
    return None if previous is None else str(previous)


# --- steps ---------------------------------------------------------------------------------------

_STEP_DONE = text(f"""
    SELECT output FROM run_steps WHERE run_id = :run_id AND name = :name AND status = {_STEP_SUCCEEDED}
""")

_SAVE_STEP = text(f"""
    INSERT INTO run_steps (run_id, name, position, status, output, error, attempt, started_at, finished_at)
    SELECT :run_id, :name, :position, :status, CAST(:output AS jsonb), :error, :attempt,
           now() - make_interval(secs => :elapsed), now()
    WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND status = {_RUNNING}
                  AND attempt = :attempt AND worker_id = :worker_id)
    ON CONFLICT (run_id, name) DO UPDATE
    SET position = EXCLUDED.position, status = EXCLUDED.status, output = EXCLUDED.output,
        error = EXCLUDED.error, attempt = EXCLUDED.attempt, started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at
    RETURNING 1
""")


def completed_step(conn: Connection, run_id: int, name: str) -> tuple[bool, Any]:
    """(True, output) when the step succeeded in an earlier attempt."""
    row = conn.execute(_STEP_DONE, {"run_id": run_id, "name": name}).first()
    return (False, None) if row is None else (True, row.output)


def save_step(conn: Connection, **values: Any) -> bool:
    """Checkpoint a step, fenced on the run's lease; False when the run is no longer ours."""
    values["output"] = None if values.get("output") is None else to_json(values["output"])
    return conn.execute(_SAVE_STEP, values).first() is not None


# --- inspection ----------------------------------------------------------------------------------

_GET_RUN = text("SELECT * FROM runs WHERE id = :id")
_RUN_STEPS = text("SELECT * FROM run_steps WHERE run_id = :id ORDER BY position")
_LIST_RUNS = text("""
    SELECT id, pipeline, status, attempt, max_attempts, priority, worker_id,
           created_at, started_at, finished_at, error
    FROM runs
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:pipeline AS text) IS NULL OR pipeline LIKE :pipeline)
    ORDER BY id DESC LIMIT :limit
""")
_LIST_WORKERS = text(f"""
    SELECT w.*, (SELECT count(*) FROM runs r WHERE r.worker_id = w.id AND r.status = {_RUNNING})
           AS running,
           EXTRACT(EPOCH FROM now() - w.heartbeat_at)::double precision AS heartbeat_age_s
    FROM workers w ORDER BY w.started_at DESC
""")


def get_run(conn: Connection, run_id: int) -> Row[Any] | None:
    return conn.execute(_GET_RUN, {"id": run_id}).first()


def run_steps(conn: Connection, run_id: int) -> list[Row[Any]]:
    return list(conn.execute(_RUN_STEPS, {"id": run_id}))


def list_runs(conn: Connection, *, status: str | None, like: str | None, limit: int) -> list[Row[Any]]:
    """The newest runs; ``like``: a LIKE pattern of their pipeline (see app.globs)."""
    return list(conn.execute(_LIST_RUNS, {"status": status, "pipeline": like, "limit": limit}))


def list_workers(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(_LIST_WORKERS))


# --- observability: queue depth, fleet report, health --------------------------------------------

# Only live rows are read (both partial indexes cover them), so the cost does not grow with
# history; pending counts runs that are due, not those scheduled for later.
_QUEUE_DEPTH = text(f"""
    SELECT pipeline, status, count(*) AS runs,
           COALESCE(EXTRACT(EPOCH FROM now() - min(run_at)), 0)::double precision AS oldest_s
    FROM runs
    WHERE (status = {_PENDING} AND run_at <= now()) OR status = {_RUNNING}
    GROUP BY pipeline, status
""")

_FINISHED_SINCE = f"""
    status IN {_FINAL_OUTCOMES}
    AND finished_at >= now() - make_interval(secs => :window)
"""

_FLEET_REPORT = text(f"""
    SELECT count(*) FILTER (WHERE status = {_SUCCEEDED}) AS succeeded,
           count(*) FILTER (WHERE status <> {_SUCCEEDED}) AS failed,
           avg(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS avg_s,
           min(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS min_s,
           max(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS max_s
    FROM runs
    WHERE {_FINISHED_SINCE}
""")

# A run is stuck when it is interrupted (see _INTERRUPTED_WHERE) or still running well past its
# time limit, which means no worker is enforcing it.
_STUCK_WHERE = f"""
    ({_INTERRUPTED_WHERE}
     OR (r.status = {_RUNNING}
         AND r.started_at + r.timeout + make_interval(secs => :stale) < now()))
"""

# A worker that is alive: not stopped, and heard from within STALE_AFTER.
_LIVE_WORKER = "stopped_at IS NULL AND heartbeat_at >= now() - make_interval(secs => :stale)"
# A pending run that has been due for longer than HEALTH_BACKLOG_FOR.
_WAITED_TOO_LONG = f"status = {_PENDING} AND run_at <= now() - make_interval(secs => :backlog_for)"

_HEALTH = text(f"""
    WITH finished AS (
        SELECT count(*) AS runs,
               count(*) FILTER (WHERE status <> {_SUCCEEDED}) AS failed,
               avg(EXTRACT(EPOCH FROM finished_at - started_at))::double precision AS avg_s
        FROM runs WHERE {_FINISHED_SINCE}
    )
    SELECT finished.runs AS finished, finished.failed, finished.avg_s,
           (SELECT count(*) FROM runs WHERE status = {_PENDING} AND run_at <= now()) AS backlog,
           (SELECT count(*) FROM runs WHERE {_WAITED_TOO_LONG}) AS backlog_waiting,
           (SELECT count(*) FROM workers WHERE {_LIVE_WORKER}) AS live_workers,
           (SELECT array_agg(id ORDER BY id) FROM workers WHERE stopped_at IS NULL
              AND heartbeat_at < now() - make_interval(secs => :stale)) AS silent_workers,
           (SELECT count(*) FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
              WHERE {_STUCK_WHERE}) AS stuck_runs,
           (SELECT max(finished_at) FROM runs WHERE finished_at IS NOT NULL) AS last_activity,
           (SELECT array_agg(waiting.pipeline ORDER BY waiting.pipeline)
              FROM (SELECT pipeline FROM runs WHERE {_WAITED_TOO_LONG} GROUP BY pipeline) AS waiting
              WHERE NOT EXISTS (SELECT 1 FROM workers w
                                WHERE {_LIVE_WORKER} AND waiting.pipeline = ANY(w.pipelines))
                AND NOT EXISTS (SELECT 1 FROM pauses p WHERE waiting.pipeline LIKE p.like_pattern)
           ) AS unserved_pipelines
    FROM finished
""")


@dataclass(frozen=True)
class QueueDepth:
    pipeline: str
    status: str
    runs: int
    oldest_s: float


def queue_depth(conn: Connection) -> list[QueueDepth]:
    """Due pending and running runs by pipeline and status, with the age of the oldest."""
    return [QueueDepth(**row) for row in conn.execute(_QUEUE_DEPTH).mappings()]


def fleet_report(conn: Connection, window: timedelta) -> Row[Any]:
    """Counts and durations of the runs that finished within ``window`` (cancelled runs aside)."""
    return conn.execute(_FLEET_REPORT, {"window": window.total_seconds()}).one()


def health_snapshot(
    conn: Connection, *, window: timedelta, backlog_for: timedelta, stale_after: timedelta
) -> Row[Any]:
    """Everything the health rules read, in one statement."""
    params = {
        "window": window.total_seconds(),
        "backlog_for": backlog_for.total_seconds(),
        "stale": stale_after.total_seconds(),
    }
    return conn.execute(_HEALTH, params).one()


# --- pauses and drain ----------------------------------------------------------------------------

_PAUSE = text("""
    INSERT INTO pauses (pattern, like_pattern, paused_by) VALUES (:pattern, :like_pattern, :paused_by)
    ON CONFLICT (pattern) DO NOTHING
    RETURNING pattern
""")
_UNPAUSE = text("DELETE FROM pauses WHERE pattern = :pattern RETURNING pattern")
_LIST_PAUSES = text(f"""
    SELECT p.pattern, p.paused_at, p.paused_by,
           (SELECT count(*) FROM runs r WHERE r.status = {_PENDING} AND r.pipeline LIKE p.like_pattern)
           AS pending
    FROM pauses p ORDER BY p.paused_at, p.pattern
""")
# Every pipeline some registered worker runs (stopped ones included: they may come back).
_WORKER_PIPELINES = text("SELECT DISTINCT unnest(pipelines) AS pipeline FROM workers")
_RUNNING_MATCHING = text(f"""
    SELECT id, pipeline, worker_id, started_at FROM runs
    WHERE status = {_RUNNING} AND pipeline LIKE :like_pattern
    ORDER BY id
""")


def pause(conn: Connection, pattern: str, like_pattern: str, paused_by: str) -> bool:
    """Pause the pipelines matching ``pattern``; False when it was paused already."""
    values = {"pattern": pattern, "like_pattern": like_pattern, "paused_by": paused_by}
    return conn.execute(_PAUSE, values).first() is not None


def unpause(conn: Connection, pattern: str) -> bool:
    """Lift the pause ``pattern``; False when there was none."""
    return conn.execute(_UNPAUSE, {"pattern": pattern}).first() is not None


def list_pauses(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(_LIST_PAUSES))


def worker_pipelines(conn: Connection) -> set[str]:
    return {str(name) for name in conn.execute(_WORKER_PIPELINES).scalars()}


def running_matching(conn: Connection, like_pattern: str) -> list[Row[Any]]:
    return list(conn.execute(_RUNNING_MATCHING, {"like_pattern": like_pattern}))


# --- retention -----------------------------------------------------------------------------------

# Finished runs past their status's retention; each call deletes at most :batch rows, and SKIP
# LOCKED leaves rows another pruner or reader holds, so no statement holds many locks for long.
# ON DELETE CASCADE removes the steps of each run with it.
_EXPIRED_WHERE = f"""
    status IN {_FINISHED} AND finished_at IS NOT NULL
    AND finished_at < now() - make_interval(secs => CAST(CAST(:retention AS jsonb) ->> status AS double precision))
"""

_PRUNE_BATCH = text(f"""
    DELETE FROM runs WHERE id IN (
        SELECT id FROM runs WHERE {_EXPIRED_WHERE}
        ORDER BY finished_at LIMIT :batch FOR UPDATE SKIP LOCKED
    )
""")

_COUNT_EXPIRED = text(f"SELECT status, count(*) AS runs FROM runs WHERE {_EXPIRED_WHERE} GROUP BY status")


def prune_runs(conn: Connection, retention: dict[str, timedelta], batch: int) -> int:
    """Delete up to ``batch`` finished runs older than the retention of their status."""
    values = {"retention": _retention_json(retention), "batch": batch}
    return conn.execute(_PRUNE_BATCH, values).rowcount


def count_expired(conn: Connection, retention: dict[str, timedelta]) -> dict[str, int]:
    """How many finished runs of each status are past their retention (what a prune would delete)."""
    rows = conn.execute(_COUNT_EXPIRED, {"retention": _retention_json(retention)})
    return {str(row.status): int(row.runs) for row in rows}


def _retention_json(retention: dict[str, timedelta]) -> str:
    return json.dumps({status: age.total_seconds() for status, age in retention.items()})


# --- schedules -----------------------------------------------------------------------------------

_SCHEDULE_STATES = text("""
    SELECT pipeline, last_slot, next_slot FROM schedules WHERE pipeline = ANY(:pipelines)
    ORDER BY pipeline FOR UPDATE
""")

_SAVE_SCHEDULE = text("""
    INSERT INTO schedules (pipeline, last_slot, next_slot) VALUES (:pipeline, :last_slot, :next_slot)
    ON CONFLICT (pipeline) DO UPDATE SET last_slot = EXCLUDED.last_slot, next_slot = EXCLUDED.next_slot
""")

_LIST_SCHEDULES = text("SELECT pipeline, last_slot, next_slot FROM schedules ORDER BY pipeline")


def db_now(conn: Connection) -> datetime:
    return conn.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def schedule_states(conn: Connection, pipelines: Sequence[str]) -> dict[str, Row[Any]]:
    """The stored state of each schedule, locked until the caller's transaction ends."""
    rows = conn.execute(_SCHEDULE_STATES, {"pipelines": list(pipelines)})
    return {row.pipeline: row for row in rows}


def save_schedule(conn: Connection, pipeline: str, last_slot: datetime, next_slot: datetime) -> None:
    values = {"pipeline": pipeline, "last_slot": last_slot, "next_slot": next_slot}
    conn.execute(_SAVE_SCHEDULE, values)


def list_schedules(conn: Connection) -> dict[str, Row[Any]]:
    return {row.pipeline: row for row in conn.execute(_LIST_SCHEDULES)}
