"""Claim plan: the pauses the claim checks are read through an index.

The claim forbids sequential and bitmap scans for its transaction, so that on any statistics
it reads each pipeline's pending runs in claim order (see app.queries). The pauses it checks
every pipeline against are then read through this index (an index-only scan) instead of a
forbidden sequential scan, which the planner would still take, costed as a last resort, pushing
the plan's estimated cost past every JIT threshold.

Revision ID: 0005_claim_plan
Revises: 0004_claim_by_pipeline
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005_claim_plan"
down_revision = "0004_claim_by_pipeline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS pauses_like_idx ON pauses (like_pattern)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS pauses_like_idx")
