"""Operations: cluster-wide pauses and the last enqueued slot of each schedule.

Revision ID: 0003_operations
Revises: 0002_views
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003_operations"
down_revision = "0002_views"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The claim matches pipelines against like_pattern; the glob is kept as the operator typed it.
    op.execute("""
        CREATE TABLE pauses (
            pattern       text        PRIMARY KEY CHECK (length(pattern) BETWEEN 1 AND 200),
            like_pattern  text        NOT NULL,
            paused_at     timestamptz NOT NULL DEFAULT now(),
            paused_by     text        NOT NULL DEFAULT current_user
        )
    """)
    op.execute("COMMENT ON TABLE pauses IS 'Orbit: pipelines matching a glob here are not claimed'")
    op.execute("""
        CREATE TABLE schedules (
            pipeline   text        PRIMARY KEY,
            last_slot  timestamptz,
            next_slot  timestamptz
        )
    """)
    op.execute("COMMENT ON TABLE schedules IS 'Orbit: the last slot of each schedule that was enqueued'")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS schedules")
    op.execute("DROP TABLE IF EXISTS pauses")
