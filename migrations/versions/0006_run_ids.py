"""Run ids: an inserted run's id comes from the table's sequence.

Enqueueing many runs takes their ids from the sequence first, then inserts them with those ids
(see app.queries.insert_runs), so the role that enqueues may insert the id column. An id beyond
the sequence would make a later ordinary insert draw it and fail on the primary key, so an
inserted id must not exceed the last one this session took from the sequence (currval; without
a nextval in the session, currval refuses the insert itself). The condition is evaluated in the
trigger's WHEN, without calling a function per row: enqueueing 200,000 runs with COPY took the
same time with and without it, within the noise of the measurement (1.5 to 2.8 s).

Revision ID: 0006_run_ids
Revises: 0005_claim_plan
Create Date: 2026-12-01
"""

from alembic import op

revision = "0006_run_ids"
down_revision = "0005_claim_plan"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION orbit_refuse_run_id() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'runs.id % was not taken from its sequence: leave id out', NEW.id
                USING ERRCODE = 'check_violation';
        END $$
    """)
    op.execute("""
        CREATE TRIGGER runs_id_from_sequence BEFORE INSERT ON runs FOR EACH ROW
        WHEN (NEW.id > currval('runs_id_seq'))
        EXECUTE FUNCTION orbit_refuse_run_id()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS runs_id_from_sequence ON runs")
    op.execute("DROP FUNCTION IF EXISTS orbit_refuse_run_id()")
