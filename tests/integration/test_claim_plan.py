"""The hot path's plans on the server under test: the claim reads each pipeline's range in claim
order on fresh and on stale statistics, and no statement of the hot path is costed high enough
for the JIT to compile it (Debian's PostgreSQL, like most packaged servers, ships with JIT on)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from app.database import libpq_url
from app.limits import limits
from app.queries import claim as claim_sql
from app.queries import fleet as fleet_sql
from app.queries import outcomes as outcome_sql
from app.queries import runs as runs_sql
from tests.support.claim_plan import explain_claim

DEFAULTS = {"test.noop": (3, 60.0), "test.echo": (3, 60.0)}
HISTORY = 20_000  # finished runs, analyzed: the statistics then say pending runs are rare
BURST = 20_000  # pending runs enqueued after the last ANALYZE


def _fill(engine: Engine, *, history: int, burst: int, analyze_between: bool) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO runs (pipeline, status, attempt, max_attempts, started_at, finished_at,
                                      worker_id, result)
                    SELECT 'test.noop', 'succeeded', 1, 3, now(), now(), 'old', 'null'
                    FROM generate_series(1, :n)"""),
            {"n": history},
        )
    if analyze_between:
        _analyze(engine)
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO runs (pipeline, priority, run_at)
                    SELECT CASE WHEN i % 2 = 0 THEN 'test.noop' ELSE 'test.echo' END, i % 3,
                           now() - make_interval(secs => i)
                    FROM generate_series(1, :n) AS i"""),
            {"n": burst},
        )


def _analyze(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE runs"))


STATISTICS: dict[str, Callable[[Engine], None]] = {
    "fresh": lambda e: (_fill(e, history=HISTORY, burst=BURST, analyze_between=False), _analyze(e)),
    "stale after a burst": lambda e: _fill(e, history=HISTORY, burst=BURST, analyze_between=True),
    "analyzed empty": lambda e: (_analyze(e), _fill(e, history=0, burst=BURST, analyze_between=False)),
}


@pytest.fixture(params=list(STATISTICS))
def filled(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Engine]:
    STATISTICS[request.param](engine)
    yield engine


def _jit_above_cost(engine: Engine) -> float:
    with engine.connect() as conn:
        return float(conn.execute(text("SHOW jit_above_cost")).scalar_one())


def _plan_cost(plan: list[str]) -> float:
    """The estimated total cost of the plan's top node."""
    return float(plan[0].split("cost=")[1].split("..")[1].split(" ")[0])


@pytest.mark.parametrize("flow", ["unlimited", "flow control, no limit", "limited"])
@pytest.mark.parametrize("limit", [10, 200])
def test_the_claim_reads_the_index_in_order_and_is_never_compiled(
    filled: Engine, limit: int, flow: str
) -> None:
    """On any statistics: each range is read from runs_pending_idx in claim order (no bitmap or
    sequential scan of runs, no sort of the backlog), the plan is costed below jit_above_cost,
    and EXPLAIN ANALYZE shows no JIT compilation, on a server whose JIT is on or off; with flow
    control on one of the pipelines (a cap, a rate and groups) as without, and in the claim
    without flow control that a worker sends when no limit can apply."""
    first = next(iter(DEFAULTS))
    capped = {first: limits(concurrency=limit // 2, rate="100000/m", group_concurrency=2)}
    with filled.begin() as conn:
        plan = explain_claim(
            conn,
            limit=limit,
            defaults=DEFAULTS,
            limits=capped if flow == "limited" else None,
            flow_control=flow != "unlimited",
        )
    shown = "\n".join(plan)
    assert "Index Scan using runs_pending_idx" in shown, shown
    assert "Bitmap" not in shown, shown
    assert "Seq Scan on runs" not in shown, shown
    assert "JIT:" not in shown, shown
    assert _plan_cost(plan) < _jit_above_cost(filled), shown
    for line in plan:
        if "Sort  (" in line:  # only the candidates are sorted: at most the batch from each pipeline
            # PostgreSQL 18 shows actual rows with two decimals (rows=10.00)
            rows = float(line.split("actual time=")[1].split("rows=")[1].split(" ")[0])
            assert rows <= limit * len(DEFAULTS), shown


def _explain(engine: Engine, statement: str, params: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN (FORMAT JSON) of a psycopg-style statement, planned with its real parameters."""
    with psycopg.connect(libpq_url(engine.url.render_as_string(hide_password=False))) as conn:
        row = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
        conn.rollback()
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(document[0]["Plan"])


def _node_types(plan: dict[str, Any]) -> Iterator[str]:
    yield f"{plan['Node Type']} {plan.get('Relation Name', '')}".strip()
    for child in plan.get("Plans", []):
        yield from _node_types(child)


def _ids(engine: Engine, count: int) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id FROM runs ORDER BY id LIMIT :n"), {"n": count})
        return [int(row.id) for row in rows]


def _hot_statements(engine: Engine) -> dict[str, tuple[str, dict[str, Any]]]:
    """The statements a busy worker and enqueue() run per run or per batch, with real parameters."""
    ids = _ids(engine, 100)
    attempts = [1] * len(ids)
    insert = {
        "pipeline": "test.noop",
        "params": "{}",
        "priority": 0,
        "run_at": None,
        "delay": 0.0,
        "max_attempts": None,
        "timeout": None,
        "key": "k",
        "group": None,
    }
    fail = {
        "id": ids[0],
        "attempt": 1,
        "status": "pending",
        "delay": 1.0,
        "refund": 0,
        "error": "e",
        "entry": "{}",
        "worker_id": "w",
    }
    fenced = {"ids": ids, "attempts": attempts, "worker_id": "w"}
    return {
        "enqueue": (runs_sql._INSERT_RUN, insert),
        "enqueue, key held": (runs_sql._LIVE_RUN_BY_KEY, {"key": "k"}),
        "successes": (
            outcome_sql._SUCCEED_MANY,
            {
                "outcomes": json.dumps([[i, a, None] for i, a in zip(ids, attempts, strict=True)]),
                "worker_id": "w",
            },
        ),
        "failure": (outcome_sql._FAIL, fail),
        "heartbeat": (_psycopg(fleet_sql._RUNS_HEARTBEAT.text), fenced),
        "worker's heartbeat": (
            _psycopg(fleet_sql._BEAT.text),
            {**fenced, "memory": '{"total_pss": 1}', "within": 10.0},
        ),
    }


def _after_a_lost_reply(engine: Engine) -> dict[str, tuple[str, dict[str, Any]]]:
    """The statements a worker runs only after a turn whose reply was lost."""
    ids = _ids(engine, 100)
    fenced = {"ids": ids, "attempts": [1] * len(ids), "worker_id": "w"}
    return {
        "unheld runs": (claim_sql._UNHELD, {"worker_id": "w", "held": ids}),
        "written earlier": (
            _psycopg(outcome_sql._LANDED.text),
            {**fenced, "statuses": ["succeeded"] * len(ids), "errors": [None] * len(ids)},
        ),
    }


def _psycopg(statement: str) -> str:
    """A text() statement's :name parameters in psycopg's %(name)s style."""
    import re

    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", statement)


def test_no_statement_of_the_hot_path_scans_the_table_or_trips_the_jit(filled: Engine) -> None:
    """Outcomes, heartbeats and enqueues reach their rows through an index, and they and the
    statements run after a lost reply are costed below jit_above_cost, on any statistics."""
    limit = _jit_above_cost(filled)
    for name, (statement, params) in _hot_statements(filled).items():
        plan = _explain(filled, statement, params)
        assert "Seq Scan runs" not in list(_node_types(plan)), (name, list(_node_types(plan)))
        assert plan["Total Cost"] < limit, (name, plan["Total Cost"])
    for name, (statement, params) in _after_a_lost_reply(filled).items():
        assert _explain(filled, statement, params)["Total Cost"] < limit, name
