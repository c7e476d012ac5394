"""Flow control: a group on each run, overrides of the pipelines' limits, and the starts of
rate-limited pipelines.

The claim counts the running runs of a limited pipeline (and of a group in it) through
runs_running_pipeline_idx, and the starts in a rate's window through run_starts_idx; run_starts
holds a row per start of a rate-limited pipeline only, and the retention duty removes the rows
older than a day (app.limits refuses a longer window).

Revision ID: 0008_flow_control
Revises: 0007_access
Create Date: 2026-12-04
"""

from alembic import op

revision = "0008_flow_control"
down_revision = "0007_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE runs ADD COLUMN run_group text CHECK (length(run_group) BETWEEN 1 AND 200)")
    op.execute(
        "CREATE INDEX runs_running_pipeline_idx ON runs (pipeline, run_group) WHERE status = 'running'"
    )
    # Each worker's limits from its code, so health tells a backlog held by a limit from one no
    # worker takes (app.queries.inspect).
    op.execute("ALTER TABLE workers ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'")
    op.execute("""
        CREATE TABLE limits (
            pattern            text        PRIMARY KEY CHECK (length(pattern) BETWEEN 1 AND 200),
            like_pattern       text        NOT NULL,
            concurrency        int         CHECK (concurrency > 0),
            rate_count         int         CHECK (rate_count > 0),
            rate_seconds       double precision CHECK (rate_seconds > 0),
            group_concurrency  int         CHECK (group_concurrency > 0),
            set_at             timestamptz NOT NULL DEFAULT now(),
            set_by             text        NOT NULL DEFAULT current_user,
            CHECK ((rate_count IS NULL) = (rate_seconds IS NULL))
        )
    """)
    # Read by the claim, whose transaction forbids sequential scans (see app.queries.claim): the
    # first for "is any override matching", the second for "the latest override matching".
    op.execute("CREATE INDEX limits_like_idx ON limits (like_pattern)")
    op.execute("CREATE INDEX limits_set_idx ON limits (set_at)")
    op.execute("COMMENT ON TABLE limits IS 'Orbit: limits set at run time, winning over the code''s'")
    op.execute("""
        CREATE TABLE run_starts (
            pipeline    text        NOT NULL,
            started_at  timestamptz NOT NULL
        )
    """)
    op.execute("CREATE INDEX run_starts_idx ON run_starts (pipeline, started_at)")
    op.execute("COMMENT ON TABLE run_starts IS 'Orbit: when runs of rate-limited pipelines started'")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS run_starts")
    op.execute("DROP TABLE IF EXISTS limits")
    op.execute("DROP INDEX IF EXISTS runs_running_pipeline_idx")
    op.execute("ALTER TABLE workers DROP COLUMN IF EXISTS limits")
    op.execute("ALTER TABLE runs DROP COLUMN IF EXISTS run_group")
