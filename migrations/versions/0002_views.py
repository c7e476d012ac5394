"""Views for inspecting the queue with SQL: orbit_queue_summary and orbit_interrupted_runs.

Revision ID: 0002_views
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002_views"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE VIEW orbit_queue_summary AS
        SELECT pipeline, status, count(*) AS runs,
               now() - min(run_at) FILTER (WHERE status = 'pending' AND run_at <= now()) AS oldest_due_age,
               count(*) FILTER (WHERE status = 'pending' AND run_at > now()) AS scheduled_later,
               max(finished_at) AS last_finished_at
        FROM runs
        GROUP BY pipeline, status
    """)
    op.execute("""
        COMMENT ON VIEW orbit_queue_summary IS
            'Runs by pipeline and status; oldest_due_age: how long the oldest due pending run has waited'
    """)
    # The stale threshold is a setting of the workers, which a view cannot read: it comes from the
    # database parameter orbit.stale_after (ALTER DATABASE ... SET orbit.stale_after = '30s'), and is
    # 15 seconds otherwise, the default of STALE_AFTER.
    op.execute("""
        CREATE VIEW orbit_interrupted_runs AS
        SELECT r.id, r.pipeline, r.worker_id, r.attempt, r.max_attempts, r.heartbeat_at,
               now() - r.heartbeat_at AS heartbeat_age,
               w.stopped_at AS worker_stopped_at,
               (SELECT s.name FROM run_steps s
                WHERE s.run_id = r.id AND s.status = 'succeeded'
                ORDER BY s.position DESC LIMIT 1) AS last_completed_step
        FROM runs r LEFT JOIN workers w ON w.id = r.worker_id
        WHERE r.status = 'running'
          AND (r.heartbeat_at IS NULL
               OR r.heartbeat_at < now() - COALESCE(
                    CAST(NULLIF(current_setting('orbit.stale_after', true), '') AS interval),
                    interval '15 seconds')
               OR w.stopped_at IS NOT NULL)
    """)
    op.execute("""
        COMMENT ON VIEW orbit_interrupted_runs IS
            'Running runs whose worker stopped heartbeating (orbit.stale_after, default 15s) or stopped'
    """)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS orbit_interrupted_runs")
    op.execute("DROP VIEW IF EXISTS orbit_queue_summary")
