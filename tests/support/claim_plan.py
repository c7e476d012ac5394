"""The plan of the worker's claim, for the tests and the benchmark: what it reads, and how."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection

from app.limits import Limits
from app.queries.claim import _CLAIM, _CLAIM_UNLIMITED, _TURN_PLAN, _claim_params
from app.queries.common import on_driver


def explain_claim(
    conn: Connection,
    *,
    limit: int,
    defaults: dict[str, tuple[int, float]],
    limits: Mapping[str, Limits] | None = None,
    flow_control: bool | None = None,
) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim as a worker's turn (app.queries.exchange) sends it,
    with its planner settings, rolled back: what it touches. ``flow_control``: the claim with
    flow control (by default when ``limits`` are given), else the one without."""
    params = _claim_params("explain", limit, defaults, "explain", limits or {})
    claim = _CLAIM if (bool(limits) if flow_control is None else flow_control) else _CLAIM_UNLIMITED
    with conn.begin_nested() as savepoint, on_driver(conn) as driver:
        driver.execute(_TURN_PLAN)
        plan = [str(row[0]) for row in driver.execute(f"EXPLAIN (ANALYZE, BUFFERS) {claim}", params)]
        savepoint.rollback()
    return plan
