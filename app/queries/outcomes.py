"""The outcomes of a worker's runs, as its turn (app.queries.claim.exchange) writes them: the
successes in one statement, each other end (a retry, a failure, a refund) in its own. Each is
fenced on run id, attempt, status running and worker: a run no longer the worker's is left alone,
and ``landed`` tells, after a turn whose reply was lost, which outcomes are in already."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, text

from app.queries.common import PENDING, RUNNING, SUCCEEDED, to_json
from app.states import RunStatus

# The outcomes come as one JSON array of [id, attempt, result] (results are JSON already): one
# parameter to send, where three arrays cost the worker more to encode than the update itself.
_SUCCEED_MANY = f"""
    UPDATE runs r
    SET status = {SUCCEEDED}, result = v.result, finished_at = now(), error = NULL
    FROM (SELECT (e ->> 0)::bigint AS id, (e ->> 1)::int AS attempt, e -> 2 AS result
          FROM jsonb_array_elements(CAST(%(outcomes)s AS jsonb)) AS e) AS v
    WHERE r.id = v.id AND r.attempt = v.attempt AND r.status = {RUNNING} AND r.worker_id = %(worker_id)s
    RETURNING r.id
"""

_FAIL = f"""
    UPDATE runs
    SET status = %(status)s,
        run_at = CASE WHEN %(status)s = {PENDING} THEN now() + make_interval(secs => %(delay)s) ELSE run_at END,
        finished_at = CASE WHEN %(status)s = {PENDING} THEN NULL ELSE now() END,
        attempt = attempt - %(refund)s,
        error = %(error)s,
        errors = CASE WHEN CAST(%(entry)s AS jsonb) IS NULL THEN errors
                      ELSE errors || jsonb_build_array(CAST(%(entry)s AS jsonb)
                                     || jsonb_build_object('at', now())) END
    WHERE id = %(id)s AND attempt = %(attempt)s AND status = {RUNNING} AND worker_id = %(worker_id)s
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


def send_successes(
    driver: psycopg.Connection[Any], worker_id: str, outcomes: Sequence[Success]
) -> psycopg.Cursor[Any]:
    encoded = ",".join([f"[{o.id},{o.attempt},{o.result_json}]" for o in outcomes])
    return driver.execute(_SUCCEED_MANY, {"outcomes": f"[{encoded}]", "worker_id": worker_id})


def written_ids(cursor: psycopg.Cursor[Any]) -> set[int]:
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


def send_transition(driver: psycopg.Connection[Any], worker_id: str, t: Transition) -> psycopg.Cursor[Any]:
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


# An outcome of a limited pipeline frees room another worker may be waiting for: wake the idle
# workers, as a new run does (app.notifier), instead of leaving the slot to their next poll. The
# notification goes out when the turn commits. A pipeline is limited by its code (%(limited)s)
# or by an override; with neither anywhere, the statement stops at the empty limits table
# without reading the runs.
WAKE_FOR_ROOM = """
    SELECT pg_notify(%(channel)s, '')
    WHERE (cardinality(CAST(%(limited)s AS text[])) > 0 OR EXISTS (SELECT 1 FROM limits))
      AND EXISTS (SELECT 1 FROM runs r WHERE r.id = ANY(%(ids)s)
                  AND (r.pipeline = ANY(CAST(%(limited)s AS text[]))
                       OR EXISTS (SELECT 1 FROM limits o WHERE r.pipeline LIKE o.like_pattern)))
"""
