"""A rate's starts are counted from running totals: run_starts holds one row per claim of a
rate-limited pipeline, with how many runs it started and the pipeline's total of starts so far,
so that the starts within a window are the latest total less the total before the window's first
row (two index probes), instead of one row per start counted one by one (10,000 index entries a
claim at 10,000 starts a second, a third of the claim's time, measured on PostgreSQL 15).

The claim writes a row under the pipeline's lock, with a time never before the previous row's, so
times and totals rise together (app.queries.limits). Existing starts are converted, one row per
pipeline and time.

Revision ID: 0011_start_totals
Revises: 0010_wake_one
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011_start_totals"
down_revision = "0010_wake_one"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE run_starts RENAME TO run_starts_old")
    op.execute("ALTER INDEX run_starts_idx RENAME TO run_starts_old_idx")
    op.execute("""
        CREATE TABLE run_starts (
            pipeline    text        NOT NULL,
            started_at  timestamptz NOT NULL,
            starts      int         NOT NULL CHECK (starts > 0),
            total       bigint      NOT NULL
        )
    """)
    op.execute("""
        INSERT INTO run_starts (pipeline, started_at, starts, total)
        SELECT pipeline, started_at, count(*),
               sum(count(*)) OVER (PARTITION BY pipeline ORDER BY started_at)
        FROM run_starts_old GROUP BY pipeline, started_at
    """)
    op.execute("DROP TABLE run_starts_old")
    op.execute("CREATE INDEX run_starts_idx ON run_starts (pipeline, started_at, total)")
    op.execute("""
        COMMENT ON TABLE run_starts IS
        'Orbit: starts of rate-limited pipelines, a row per claim: how many, and the pipeline''s total so far'
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE run_starts RENAME TO run_starts_new")
    op.execute("ALTER INDEX run_starts_idx RENAME TO run_starts_new_idx")
    op.execute("CREATE TABLE run_starts (pipeline text NOT NULL, started_at timestamptz NOT NULL)")
    op.execute("""
        INSERT INTO run_starts (pipeline, started_at)
        SELECT pipeline, started_at FROM run_starts_new, generate_series(1, starts)
    """)
    op.execute("DROP TABLE run_starts_new")
    op.execute("CREATE INDEX run_starts_idx ON run_starts (pipeline, started_at)")
    op.execute("COMMENT ON TABLE run_starts IS 'Orbit: when runs of rate-limited pipelines started'")
