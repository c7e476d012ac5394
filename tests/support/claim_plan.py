"""The plan of the worker's claim, for the tests and the benchmark: what it reads, and how."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection

from app.limits import Limits
from app.queries.claim import _CLAIM, _TURN_PLAN, _claim_params
from app.queries.common import on_driver


def explain_claim(
    conn: Connection,
    *,
    limit: int,
    defaults: dict[str, tuple[int, float]],
    limits: Mapping[str, Limits] | None = None,
) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim as a worker's turn (app.queries.exchange) sends it,
    with its planner settings, rolled back: what it touches."""
    params = _claim_params("explain", limit, defaults, "explain", limits or {})
    with conn.begin_nested() as savepoint, on_driver(conn) as driver:
        driver.execute(_TURN_PLAN)
        plan = [str(row[0]) for row in driver.execute(f"EXPLAIN (ANALYZE, BUFFERS) {_CLAIM}", params)]
        savepoint.rollback()
    return plan
