"""Runs in and out: enqueue, steps, and reading runs back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, text

from app.queries.common import (
    LIVE_SQL,
    RUNNING,
    STEP_SUCCEEDED,
    on_driver,
    to_json,
)

_INSERT_RUN = f"""
    INSERT INTO runs (pipeline, params, priority, run_at, max_attempts, timeout, key, run_group)
    VALUES (%(pipeline)s, CAST(%(params)s AS jsonb), %(priority)s,
            COALESCE(CAST(%(run_at)s AS timestamptz), now() + make_interval(secs => %(delay)s)),
            %(max_attempts)s, make_interval(secs => CAST(%(timeout)s AS double precision)), %(key)s,
            %(group)s)
    ON CONFLICT (key) WHERE key IS NOT NULL AND status IN {LIVE_SQL} DO NOTHING
    RETURNING id
"""

# A run that asks for nothing but its pipeline and params (most do): the table's defaults are what
# it asks for, and two parameters cost less to send than nine (about 70 µs of an enqueue on a
# process that had been idle: psycopg adapts each one at every execution).
_INSERT_PLAIN_RUN = "INSERT INTO runs (pipeline, params) VALUES (%s, CAST(%s AS jsonb)) RETURNING id"

_LIVE_RUN_BY_KEY = f"""
    SELECT id FROM runs WHERE key = %(key)s AND status IN {LIVE_SQL}
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
    "run_group": (itemgetter(9), None),
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
    group: str | None = None  # the run_group column: group_concurrency counts by it

    @property
    def encoded_params(self) -> str:
        return self.params_json or to_json(self.params)


def insert_run(conn: Connection, run: NewRun) -> int:
    """Insert one run; with a key that is live already, return the live run's id."""
    return insert_run_once(conn, run)[0]


def insert_run_once(conn: Connection, run: NewRun) -> tuple[int, bool]:
    """As :func:`insert_run`, and whether this call inserted it (False: a live run has its key)."""
    if _asks_nothing(run):
        with on_driver(conn) as driver:
            inserted = driver.execute(_INSERT_PLAIN_RUN, (run.pipeline, run.encoded_params)).fetchone()
        assert inserted is not None
        return int(inserted[0]), True
    values = {
        "pipeline": run.pipeline,
        "params": run.encoded_params,
        "priority": run.priority,
        "run_at": run.run_at,
        "delay": run.delay,
        "max_attempts": run.max_attempts,
        "timeout": run.timeout,
        "key": run.key,
        "group": run.group,
    }
    with on_driver(conn) as driver:
        while True:
            inserted = driver.execute(_INSERT_RUN, values).fetchone()
            if inserted is not None:
                return int(inserted[0]), True
            # The key is held by a live run; it may finish before we read it, then insert again.
            existing = driver.execute(_LIVE_RUN_BY_KEY, {"key": run.key}).fetchone()
            if existing is not None:
                return int(existing[0]), False


def _asks_nothing(run: NewRun) -> bool:
    """The run leaves every column but its pipeline and params to the table's defaults (NewRun's
    own, which are the table's: a field added to NewRun is compared too)."""
    return run == NewRun(run.pipeline, run.params, params_json=run.params_json)


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
    with on_driver(conn) as driver:
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


_STEP_DONE = text(f"""
    SELECT output FROM run_steps WHERE run_id = :run_id AND name = :name AND status = {STEP_SUCCEEDED}
""")

_SAVE_STEP = text(f"""
    INSERT INTO run_steps (run_id, name, position, status, output, error, attempt, started_at, finished_at)
    SELECT :run_id, :name, :position, :status, CAST(:output AS jsonb), :error, :attempt,
           now() - make_interval(secs => :elapsed), now()
    WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND status = {RUNNING}
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
    SELECT w.*, (SELECT count(*) FROM runs r WHERE r.worker_id = w.id AND r.status = {RUNNING})
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
