"""A rate's starts are counted from running totals: run_starts holds one row per claim of a
rate-limited pipeline, with how many runs it started and the pipeline's total of starts so far,
so that the starts within a window are the latest total less the total before the window's first
row (two index probes), instead of one row per start counted one by one (10,000 index entries a
claim at 10,000 starts a second, a third of the claim's time, measured on PostgreSQL 15).

The claim writes a row under the pipeline's lock, with a time never before the previous row's, so
times and totals rise together (app.queries.limits). Existing starts are converted, one row per
pipeline and time, in the table itself: its owner and the grants deploy/roles.sql gave on it stay,
so workers of this version claim at once, before roles.sql runs again. Workers of the code before
must not claim a rate-limited pipeline once it has run (their claim writes a row per start without
the totals, which the table now refuses): a deploy drains the fleet first (docs/operations.md).

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
    op.execute("DROP INDEX run_starts_idx")  # not kept up through the conversion, made again after
    op.execute("ALTER TABLE run_starts ADD COLUMN starts int, ADD COLUMN total bigint")
    # One statement, one snapshot: the DELETE returns the rows of a start each, the INSERT writes
    # their totals, and neither sees the other's rows.
    op.execute("""
        WITH old AS (DELETE FROM run_starts RETURNING pipeline, started_at)
        INSERT INTO run_starts (pipeline, started_at, starts, total)
        SELECT pipeline, started_at, count(*), sum(count(*)) OVER (PARTITION BY pipeline ORDER BY started_at)
        FROM old GROUP BY pipeline, started_at
    """)
    op.execute("""
        ALTER TABLE run_starts ALTER COLUMN starts SET NOT NULL, ALTER COLUMN total SET NOT NULL,
            ADD CONSTRAINT run_starts_starts_check CHECK (starts > 0)
    """)
    op.execute("CREATE INDEX run_starts_idx ON run_starts (pipeline, started_at, total)")
    op.execute("""
        COMMENT ON TABLE run_starts IS
        'Orbit: starts of rate-limited pipelines, a row per claim: how many, and the pipeline''s total so far'
    """)


def downgrade() -> None:
    op.execute("DROP INDEX run_starts_idx")  # before its column goes, which would take it along
    op.execute("""
        ALTER TABLE run_starts DROP CONSTRAINT run_starts_starts_check,
            ALTER COLUMN starts DROP NOT NULL, ALTER COLUMN total DROP NOT NULL
    """)
    op.execute("""
        WITH new AS (DELETE FROM run_starts RETURNING pipeline, started_at, starts)
        INSERT INTO run_starts (pipeline, started_at)
        SELECT pipeline, started_at FROM new, generate_series(1, starts)
    """)
    op.execute("ALTER TABLE run_starts DROP COLUMN starts, DROP COLUMN total")
    op.execute("CREATE INDEX run_starts_idx ON run_starts (pipeline, started_at)")
    op.execute("COMMENT ON TABLE run_starts IS 'Orbit: when runs of rate-limited pipelines started'")
