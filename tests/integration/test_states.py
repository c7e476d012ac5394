"""The SQL forms of the lifecycle's rules (app.states) mean what their Python forms mean."""

from __future__ import annotations

from sqlalchemy import Engine, text

from app.states import RETRIES_SQL, retries

# The rule applied by the database to a row of runs named r, as the rescuer's statement applies it.
_RETRIED = text(f"""
    SELECT r.attempt, r.max_attempts, {RETRIES_SQL} AS retried
    FROM unnest(CAST(:attempts AS int[]), CAST(:max_attempts AS int[])) AS r(attempt, max_attempts)
""")


def test_the_database_applies_the_same_retry_rule(engine: Engine) -> None:
    """For every attempt and max_attempts (unset included), RETRIES_SQL says what retries() says."""
    cases = [(attempt, most) for attempt in range(5) for most in (None, 1, 2, 3)]
    params = {"attempts": [a for a, _ in cases], "max_attempts": [m for _, m in cases]}
    with engine.connect() as conn:
        rows = conn.execute(_RETRIED, params).all()
    assert len(rows) == len(cases)
    for row in rows:
        assert row.retried is retries(row.attempt, row.max_attempts), row
