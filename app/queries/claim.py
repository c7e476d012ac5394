"""The worker's turn: the claim, and ``exchange``, which sends it with the worker's outcomes
(app.queries.outcomes) in one round trip."""

from __future__ import annotations

import contextlib
import json
import json.encoder
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import psycopg
import psycopg.rows
from sqlalchemy import Connection

from app.limits import Limits
from app.queries.common import (
    PENDING,
    RUNNING,
    RUNS_CHANNEL,
    on_driver,
    single_line,
    text_array,
)
from app.queries.limits import LIMITS_IN_FORCE, latest_start, running_of, starts_within
from app.queries.outcomes import (
    WAKE_FOR_ROOM,
    Success,
    Transition,
    send_successes,
    send_transition,
    written_ids,
)

# A ClaimedRun's fields, in order, from a row of runs (or of the claim's RETURNING).
_CLAIMED_RUN = """
    SELECT id, pipeline, params::text AS params_json, attempt, max_attempts,
           EXTRACT(EPOCH FROM timeout)::float8 AS timeout_s,
           GREATEST(EXTRACT(EPOCH FROM now() - run_at), 0)::float8 AS waited_s
"""

# A claim reads each of the worker's pipelines in its own range of runs_pending_idx (pipeline,
# then claim order), locks at most the batch size there, and keeps the first runs of them all in
# claim order. Runs of other pipelines are never read: a backlog of a paused pipeline, or of one
# another fleet runs, costs a claim nothing (one index in claim order for all pipelines, read
# past them, took 34 ms a claim behind 100,000 of them; this way 1.1 ms, measured). Runs locked in
# one range but not kept are free again when the claim commits. Paused pipelines are left out
# here, so every worker obeys a pause on its next poll without being told; the unpaused pipelines
# are worked out once per claim. The CTE fences the planner: the LIMIT is applied before the
# UPDATE, so a claim never takes more rows than asked. The claimed runs come back in claim order
# (a worker starts runs it claimed ahead in that order). Defaults of the pipeline are written into
# the row at claim time, so SQL readers (and the rescuer, which has no registry) see the
# effective values.
#
# Flow control (app.limits). A limited pipeline's range is read up to its room: its concurrency
# less its running runs, its rate's count less the starts in the window (run_starts, whose
# running totals count them in two index probes: app.queries.limits), whichever is smaller;
# within it, a run of a group is passed over while its group is full, and at most the
# group's room of each group is kept. The counts are exact because one claimer at a time counts
# for a pipeline: each claim first tries a transaction lock per limited pipeline (_LOCK_LIMITED,
# a statement of its own, so that the claim's snapshot is taken once the lock is held and sees
# every claim committed before), and a pipeline whose lock the claim does not hold gets no room
# this turn: another worker is claiming it now, or it became limited (an override) after the
# locks were taken. The statement names the pipelines it locked in the transaction's setting
# orbit.locked, which the claim reads. The lock is tried, not waited for: a claim waiting its
# turn for a capped pipeline held up the claims of every other pipeline of its worker (a drain
# beside a capped backlog ran at 71 % of the drain alone, 20,000 runs a second). Counting
# running rows, rather than keeping counters, means every way out of running (an outcome, a rescue, a cancel, a refund, an UPDATE
# in SQL) frees its slot with no bookkeeping, and the count reads at most the cap's rows of
# runs_running_pipeline_idx. A crashed worker's runs stay running until rescued, so they count
# against the cap meanwhile. The claim's text is kept under psycopg's 4,096 characters
# (single_line), hence its terse casts.
# Overrides (the limits table) win over the code's values field by field, the latest first.
LOCK_SPACE = 7270187  # pg_advisory_xact_lock(LOCK_SPACE, hashtext(pipeline))

_LOCK_LIMITED = """
    SELECT set_config('orbit.locked', COALESCE(json_agg(name)::text, '[]'), true) FROM (
        SELECT name FROM unnest(%(pipelines)s::text[]) AS name
        WHERE CASE WHEN name = ANY(CAST(%(limited)s AS text[]))  -- the lock tried for limited ones only
                         OR EXISTS (SELECT 1 FROM limits o WHERE name LIKE o.like_pattern)
                   THEN pg_try_advisory_xact_lock(%(lock_space)s, hashtext(name)) ELSE false END
    ) AS locked
"""

_GROUP_RUNNING = running_of("allowed.name", "runs.run_group")

# The worker's pipelines, less the paused ones.
_ALLOWED = """
    WITH allowed AS MATERIALIZED (
        SELECT name FROM unnest(%(pipelines)s::text[]) AS name
        WHERE NOT EXISTS (SELECT 1 FROM pauses p WHERE name LIKE p.like_pattern)
    )
"""

# A run the claim may take, in the range of runs_pending_idx of pipeline allowed.name: pending and
# due (``waited`` seconds ago, for a look at runs another worker was told of).
_DUE_OF_ALLOWED = f"""status = {PENDING} AND run_at <= now() - make_interval(secs => %(waited)s)
                      AND runs.pipeline = allowed.name"""

# The runs chosen (CTE next) made this worker's, with their pipeline's defaults.
_TAKE = f"""
    , claimed AS (
        UPDATE runs r
        SET status = {RUNNING}, attempt = r.attempt + 1, worker_id = %(worker_id)s,
            started_at = now(), heartbeat_at = now(), finished_at = NULL, code_version = %(version)s,
            max_attempts = COALESCE(r.max_attempts, (%(defaults)s::jsonb #>> ARRAY[r.pipeline, 'max_attempts'])::int),
            timeout = COALESCE(r.timeout, make_interval(secs => (%(defaults)s::jsonb #>> ARRAY[r.pipeline, 'timeout_s'])::float8))
        WHERE r.id = ANY(ARRAY(SELECT id FROM next))
        RETURNING r.id, r.pipeline, r.params, r.attempt, r.max_attempts, r.timeout, r.priority, r.run_at
    )
"""

_RETURNED = (
    _CLAIMED_RUN
    + """
    FROM claimed
    ORDER BY priority DESC, run_at, id
"""
)

_CLAIM = single_line(
    _ALLOWED
    + f"""
    , limited AS MATERIALIZED (
        SELECT e.*, COALESCE(NULLIF(current_setting('orbit.locked', true), ''), '[]')::jsonb ? e.name AS locked
        FROM (
            SELECT a.name, {LIMITS_IN_FORCE}
            FROM allowed a
            CROSS JOIN LATERAL (SELECT %(limits)s::jsonb -> a.name AS v) AS code
        ) AS e
        WHERE num_nonnulls(e.concurrency, e.group_concurrency, e.rate_count) > 0
    )
    , room AS MATERIALIZED (
        SELECT name, group_concurrency, rate_count, latest.started_at, latest.total,
               CASE WHEN locked THEN GREATEST(0, LEAST(  -- LEAST passes over the limits not set
                   %(limit)s,
                   concurrency - {running_of("l.name")},
                   rate_count - {starts_within("latest", "l.rate_seconds", "statement_timestamp()")}
               )) ELSE 0 END AS room
        FROM limited l
        LEFT JOIN LATERAL {latest_start("l.name")} AS latest ON l.rate_count IS NOT NULL
    )
    , next AS (
        SELECT id FROM (
            SELECT candidate.*, row_number() OVER (
                       PARTITION BY allowed.name, run_group ORDER BY priority DESC, run_at, id) AS nth
            FROM allowed
            LEFT JOIN room ON room.name = allowed.name
            CROSS JOIN LATERAL (
                SELECT id, priority, run_at, run_group, g.room AS group_room
                FROM runs
                CROSS JOIN LATERAL (SELECT CASE WHEN room.group_concurrency IS NULL OR run_group IS NULL THEN NULL
                                                ELSE room.group_concurrency - {_GROUP_RUNNING} END AS room) AS g
                WHERE {_DUE_OF_ALLOWED} AND (g.room IS NULL OR g.room > 0)
                ORDER BY priority DESC, run_at, id
                LIMIT COALESCE(room.room, %(limit)s)  -- no room row: not limited
                FOR UPDATE OF runs SKIP LOCKED
            ) AS candidate
        ) AS ranked
        WHERE group_room IS NULL OR nth <= group_room
        ORDER BY priority DESC, run_at, id
        LIMIT %(limit)s
    )
"""
    + _TAKE
    + """
    , started AS (  -- under the pipeline's lock, after its latest row (app.queries.limits)
        INSERT INTO run_starts (pipeline, started_at, starts, total)
        SELECT c.pipeline, GREATEST(statement_timestamp(), room.started_at), count(*), COALESCE(room.total, 0) + count(*)
        FROM claimed c JOIN room ON room.name = c.pipeline AND room.rate_count IS NOT NULL
        GROUP BY c.pipeline, room.started_at, room.total
    )
"""
    + _RETURNED
)

# The claim when no limit can apply (no pipeline of the worker has one in its code, and the
# limits table held no override when the worker last looked): the same runs in the same order as
# _CLAIM with no limited pipeline, without its flow control. That part's plan (the overrides'
# lookups, the room, the ranking within groups, the rate's starts) cost a third of an idle
# worker's claim, 0.2 ms of a pickup, measured on PostgreSQL 15. An override set since the
# worker last looked gives its pipelines no room, as in _CLAIM without their lock, until the
# worker's heartbeat sees it and its claims become _CLAIM.
_CLAIM_UNLIMITED = single_line(
    _ALLOWED
    + f"""
    , next AS (
        SELECT candidate.id FROM allowed
        CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM runs
            WHERE {_DUE_OF_ALLOWED}
            ORDER BY priority DESC, run_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS candidate
        WHERE NOT EXISTS (SELECT 1 FROM limits o WHERE allowed.name LIKE o.like_pattern)
        ORDER BY candidate.priority DESC, candidate.run_at, candidate.id
        LIMIT %(limit)s
    )
"""
    + _TAKE
    + _RETURNED
)


# Each pipeline's (max_attempts, timeout in seconds); the claim reads them by name.
Defaults = Mapping[str, tuple[int, float]]


@dataclass(frozen=True)
class Claimer:
    """What every claim of one worker sends alike, encoded once: its id, its pipelines with their
    defaults, its code version and its pipelines' limits from the code."""

    worker_id: str
    pipelines: tuple[str, ...]
    defaults: str  # JSON: {pipeline: {max_attempts, timeout_s}}
    version: str
    limits: str  # JSON: {pipeline: limits}, the limited ones only
    limited: tuple[str, ...]

    @classmethod
    def of(cls, worker_id: str, defaults: Defaults, version: str, limits: Mapping[str, Limits]) -> Claimer:
        named = {
            pipeline: {"max_attempts": max_attempts, "timeout_s": timeout_s}
            for pipeline, (max_attempts, timeout_s) in defaults.items()
        }
        limited = {name: flow for name, flow in limits.items() if flow}
        return cls(
            worker_id,
            tuple(defaults),
            json.dumps(named),
            version,
            json.dumps({name: flow.as_claim() for name, flow in limited.items()}),
            tuple(limited),
        )

    @cached_property
    def _fixed(self) -> dict[str, Any]:
        # Encoded once: what every claim of this worker sends alike (see text_array).
        return {
            "pipelines": text_array(self.pipelines),
            "worker_id": self.worker_id,
            "defaults": self.defaults,
            "version": self.version,
            "limits": self.limits,
            "limited": self.limited_array,
            "lock_space": LOCK_SPACE,
        }

    @cached_property
    def limited_array(self) -> str:
        """The limited pipelines as a ``text[]`` parameter."""
        return text_array(self.limited)

    def params(self, limit: int, *, waited: float = 0.0) -> dict[str, Any]:
        """The parameters of the claim (and of its lock statement); with ``waited``, only runs due
        that many seconds ago are taken."""
        return {**self._fixed, "limit": limit, "waited": waited}


def _claim_params(
    worker_id: str, limit: int, defaults: Defaults, version: str, limits: Mapping[str, Limits]
) -> dict[str, Any]:
    return Claimer.of(worker_id, defaults, version, limits).params(limit)


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
# These settings are made first in the turn, and its statements keep a generic plan: psycopg
# prepares a statement after five executions, and PostgreSQL would otherwise plan the claim
# again at every execution, its generic plan being estimated dearer than the custom ones (0.5 ms
# of planning a turn, 16 µs a run in a drain). Through PgBouncer nothing is prepared, and each
# statement is planned as it comes.
_PLAN = (
    "SELECT set_config('enable_seqscan', 'off', {local}), set_config('enable_bitmapscan', 'off', {local}),"
    " set_config('jit', 'off', {local}), set_config('plan_cache_mode', 'force_generic_plan', {local})"
)
_TURN_PLAN = _PLAN.format(local="true")
# The worker's kept connection takes them for its session, once, when that session is its own
# (DATABASE_URL is the server itself, DIRECT_URL the same): every statement it runs is Orbit's
# own and reaches its rows through an index. A turn then needs no statement for them, and a claim
# with nothing else to do is one statement, its own transaction (a pickup 0.7 ms sooner on a
# machine that had been idle). Through a pooler the session may be another client's next.
_SESSION_PLAN = _PLAN.format(local="false")
_PLANNED: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


class ClaimedRun(NamedTuple):
    """A run as claimed; a tuple, so that it is made from a row, and crosses to an executor,
    at the cost of a tuple (thousands a second pass through a worker)."""

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
    driver: psycopg.Connection[Any], claimer: Claimer, limit: int, *, locking: bool, waited: float
) -> tuple[psycopg.Cursor[Any] | None, psycopg.Cursor[Any]]:
    """The lock statement and the claim when a limit may apply, else the claim without flow
    control; their cursors."""
    params = claimer.params(limit, waited=waited)
    if not locking:
        return None, driver.execute(_CLAIM_UNLIMITED, params)
    return driver.execute(_LOCK_LIMITED, params), driver.execute(_CLAIM, params)


# Runs a worker owns but does not hold: a turn whose claim committed while its reply was lost
# (the connection cut right after COMMIT). Same columns as the claim, in claim order.
_UNHELD = (
    _CLAIMED_RUN
    + f"""
    FROM runs
    WHERE status = {RUNNING} AND worker_id = %(worker_id)s AND NOT (id = ANY(%(held)s))
    ORDER BY priority DESC, run_at, id
"""
)


def unheld_runs(conn: Connection, worker_id: str, held: Collection[int]) -> list[ClaimedRun]:
    """Running runs of ``worker_id`` other than ``held``: claimed, but the worker never learnt it."""
    with on_driver(conn) as driver:
        return _claimed(driver.execute(_UNHELD, {"worker_id": worker_id, "held": list(held)}))


def _claimed(cursor: psycopg.Cursor[Any]) -> list[ClaimedRun]:
    return [ClaimedRun._make(row) for row in cursor.fetchall()]


def exchange(
    conn: Connection,
    *,
    worker_id: str,
    successes: Sequence[Success] = (),
    transitions: Sequence[Transition] = (),
    limit: int = 0,
    defaults: Defaults | None = None,
    version: str = "",
    limits: Mapping[str, Limits] | None = None,
    claimer: Claimer | None = None,
    overrides: bool = True,
    pooled: bool = False,
    freeing: bool = True,
    contended: list[str] | None = None,
    waited: float = 0.0,
) -> tuple[set[int], list[ClaimedRun]]:
    """A worker's whole turn in one transaction and one round trip: write its outcomes, then
    claim up to ``limit`` runs. Returns the ids whose outcome was written (the rest were no longer
    ours) and the runs claimed.

    The statements go out together in psycopg's pipeline mode: on a 2-core machine each round
    trip costs a wake-up of both processes, several times the statements themselves. On a
    connection in autocommit and outside a transaction (the worker's kept one) the turn is its own
    transaction; otherwise it is part of the caller's. ``claimer``: the worker's (else made from
    ``worker_id``, ``defaults``, ``version`` and ``limits``). Flow control's statements (the locks
    before the claim, the claim's own part, the wake-up when room frees) are sent only when a
    limit may apply: one of
    ``limits``, or an override (``overrides``: whether the limits table may have any, as the
    worker last read it); the wake-up only when an outcome may free room (``freeing``: the
    caller may know that none is of a limited pipeline). ``pooled``: the connection's session may
    be shared with other clients (through PgBouncer, or another pooler between DATABASE_URL and
    the server): its planner settings are then made for the turn only. ``contended``, if given,
    gets the pipelines of ``limits`` whose lock another worker held (they got no room this turn).
    ``waited``: claim only runs due at least that many seconds ago.
    """
    claimer = claimer or Claimer.of(worker_id, defaults or {}, version, limits or {})
    limiting = bool(claimer.limited) or overrides
    ended = bool(successes or transitions)
    with on_driver(conn) as driver:
        own = driver.autocommit and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        alone = bool(own and not pooled and limit and not ended and not limiting)  # one statement
        # A statement alone goes without a pipeline, whose sync and flush cost 60 µs of a pickup.
        with contextlib.nullcontext() if alone else driver.pipeline():
            _begin(driver, own=own, pooled=pooled, alone=alone)
            written = _send_outcomes(driver, claimer, successes, transitions, wake=limiting and freeing)
            locks, claiming = (
                _send_claim(driver, claimer, limit, locking=limiting, waited=waited)
                if limit
                else (None, None)
            )
            if own and not alone:
                driver.execute("COMMIT")
    owned = set().union(*(written_ids(cursor) for cursor in written))
    if locks is not None and contended is not None:
        contended.extend(_contended(locks, claimer))
    return owned, [] if claiming is None else _claimed(claiming)


def _begin(driver: psycopg.Connection[Any], *, own: bool, pooled: bool, alone: bool) -> None:
    """The planner settings (the session's, once, when it is the worker's own; else the turn's)
    and BEGIN, unless the turn is part of the caller's transaction or one statement alone."""
    planned = own and not pooled
    if planned and driver not in _PLANNED:
        driver.execute(_SESSION_PLAN)
        _PLANNED.add(driver)
    if own and not alone:
        driver.execute("BEGIN")
    if not planned:
        driver.execute(_TURN_PLAN)


def _send_outcomes(
    driver: psycopg.Connection[Any],
    claimer: Claimer,
    successes: Sequence[Success],
    transitions: Sequence[Transition],
    *,
    wake: bool,
) -> list[psycopg.Cursor[Any]]:
    """The outcomes' statements, and the wake-up for the room they may free (``wake``)."""
    written = [send_successes(driver, claimer.worker_id, successes)] if successes else []
    written += [send_transition(driver, claimer.worker_id, t) for t in transitions]
    ended = [s.id for s in successes] + [t.id for t in transitions]
    if ended and wake:
        params = {"ids": ended, "limited": claimer.limited_array, "channel": RUNS_CHANNEL}
        driver.execute(WAKE_FOR_ROOM, params)
    return written


def _contended(locks: psycopg.Cursor[Any], claimer: Claimer) -> list[str]:
    """The limited pipelines whose lock another worker held: they got no room this turn."""
    row = locks.fetchone()
    locked = set(json.loads(row[0])) if row and row[0] else set()
    return [name for name in claimer.limited if name not in locked]
