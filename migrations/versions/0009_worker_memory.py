"""What each worker's processes use, written with its heartbeat (app.memory): the worker, its fork
server and each executor, for `orbit workers` and the console.

Revision ID: 0009_worker_memory
Revises: 0008_flow_control
Create Date: 2026-12-06
"""

from alembic import op

revision = "0009_worker_memory"
down_revision = "0008_flow_control"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE workers ADD COLUMN memory jsonb")
    op.execute("""
        COMMENT ON COLUMN workers.memory IS
        'as its heartbeat last read it (once a minute): total_pss, and pid, rss and pss (bytes) of the worker, forkserver, executor-N'
    """)


def downgrade() -> None:
    op.execute("ALTER TABLE workers DROP COLUMN IF EXISTS memory")
