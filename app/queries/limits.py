"""Flow control's SQL (app.limits): the limits in force for a pipeline, an override (the limits
table) winning over the code's value field by field, and the counts they are held against. The
claim (app.queries.claim), `orbit limits` and health read them alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg.rows
from sqlalchemy import Connection

from app.limits import Limits
from app.queries.common import PENDING, RUNNING, on_driver

# The latest override of a field matching pipeline a.name: its value, or (for `orbit limits`) its
# pattern. Rates are overridden as a whole (count and window).
_OVERRIDE = """(SELECT o.{select} FROM limits o
                 WHERE a.name LIKE o.like_pattern AND o.{field} IS NOT NULL ORDER BY o.set_at DESC LIMIT 1)"""


def override(field: str, select: str = "") -> str:
    """The latest override's ``field`` (or ``select``) for pipeline ``a.name``, as a subquery."""
    return _OVERRIDE.format(field=field, select=select or field)


# The limits in force for pipeline a.name, its code's limits being the jsonb code.v: an override
# wins field by field. The claim, `orbit limits` and health read them alike.
LIMITS_IN_FORCE = f"""
    COALESCE({override("concurrency")}, (code.v ->> 'concurrency')::int) AS concurrency,
    COALESCE({override("group_concurrency")}, (code.v ->> 'group_concurrency')::int) AS group_concurrency,
    COALESCE({override("rate_count")}, (code.v ->> 'rate_count')::int) AS rate_count,
    COALESCE({override("rate_count", "rate_seconds")}, (code.v ->> 'rate_seconds')::float8)
        AS rate_seconds"""


def running_of(pipeline: str, group: str | None = None) -> str:
    """The count of running runs of ``pipeline`` (and of ``group``), SQL expressions both."""
    of_group = "" if group is None else f" AND r.run_group = {group}"
    return f"(SELECT count(*) FROM runs r WHERE r.status = {RUNNING} AND r.pipeline = {pipeline}{of_group})"


def latest_start(pipeline: str) -> str:
    """The latest row of ``pipeline`` in run_starts, as a subquery to join laterally."""
    return (
        "(SELECT t.pipeline, t.started_at, t.total FROM run_starts t"
        f" WHERE t.pipeline = {pipeline} ORDER BY t.started_at DESC, t.total DESC LIMIT 1)"
    )


def starts_within(latest: str, seconds: str, clock: str) -> str:
    """The count of starts of a pipeline in the ``seconds`` before ``clock``, ``latest`` being
    its latest row (latest_start, left joined): that row's total less the total before the
    window's first row; 0 with no row in the window. run_starts keeps a row per claim with the pipeline's
    running total, written under its lock with times and totals rising together
    (app.queries.claim), so this is exact in two index probes whatever the rate; one row per
    start, counted one by one, read 10,000 index entries a claim at 10,000 starts a second."""
    before_window = (
        f"SELECT f.total - f.starts FROM run_starts f WHERE f.pipeline = {latest}.pipeline"
        f" AND f.started_at > {clock} - make_interval(secs => {seconds}) ORDER BY f.started_at, f.total LIMIT 1"
    )
    return f"COALESCE({latest}.total - ({before_window}), 0)"


# What `orbit limits` shows: each pipeline's limits in force and where each comes from (the
# pattern of the override, or NULL for the code), read as the claim reads them.
_EFFECTIVE_LIMITS = f"""
    SELECT a.name, {LIMITS_IN_FORCE},
           {override("concurrency", "pattern")} AS concurrency_from,
           {override("rate_count", "pattern")} AS rate_from,
           {override("group_concurrency", "pattern")} AS group_concurrency_from,
           {running_of("a.name")} AS running,
           (SELECT count(*) FROM runs r WHERE r.status = {PENDING} AND r.pipeline = a.name
                                        AND r.run_at <= now()) AS due
    FROM unnest(CAST(%(pipelines)s AS text[])) AS a(name)
    CROSS JOIN LATERAL (SELECT CAST(%(limits)s AS jsonb) -> a.name AS v) AS code
    ORDER BY a.name
"""


def effective_limits(conn: Connection, code: Mapping[str, Limits]) -> list[dict[str, Any]]:
    """For each pipeline of ``code`` (its limits in the code, possibly none): the limits in force,
    where each comes from, and its running and due runs."""
    params = {
        "pipelines": sorted(code),
        "limits": json.dumps({name: flow.as_claim() for name, flow in code.items() if flow}),
    }
    with on_driver(conn) as driver, driver.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(_EFFECTIVE_LIMITS, params).fetchall()
