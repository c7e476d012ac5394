"""New runs announce themselves: the notification of an insert says its first run's id, how many
runs it inserted and, when they are all of one pipeline, which, so that one worker serving that
pipeline claims a single new run instead of every idle worker racing for it (app.worker.wakeup).

The statement trigger reads what it inserted from a transition table: about 0.13 µs a row, 6 %
of an INSERT ... SELECT of constant rows, measured on PostgreSQL 15.

Revision ID: 0010_wake_one
Revises: 0009_worker_memory
Create Date: 2026-12-06
"""

from alembic import op

revision = "0010_wake_one"
down_revision = "0009_worker_memory"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION orbit_notify_runs() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            first bigint;
            total bigint;
            name text;
        BEGIN
            SELECT min(id), count(*), CASE WHEN min(pipeline) = max(pipeline) THEN min(pipeline) END
            INTO first, total, name FROM inserted;
            IF total > 0 THEN
                PERFORM pg_notify('orbit_runs', first || ' ' || total || ' ' || coalesce(name, ''));
            END IF;
            RETURN NULL;
        END $$
    """)
    op.execute("DROP TRIGGER IF EXISTS runs_notify ON runs")
    op.execute("""
        CREATE TRIGGER runs_notify AFTER INSERT ON runs REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION orbit_notify_runs()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS runs_notify ON runs")
    op.execute("""
        CREATE OR REPLACE FUNCTION orbit_notify_runs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('orbit_runs', '');
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER runs_notify AFTER INSERT ON runs
        FOR EACH STATEMENT EXECUTE FUNCTION orbit_notify_runs()
    """)
