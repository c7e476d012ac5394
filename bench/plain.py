"""The ceiling: bare psycopg loops that enqueue, or claim and complete, and do nothing else.

``python -m bench.plain URL BATCH`` claims up to BATCH pending runs, marks them succeeded, and
repeats until a claim comes back empty. No executor, no fencing, no heartbeat, no time limit.
``copy_runs`` and ``insert_runs`` are the plain enqueue loops (one COPY per batch; one INSERT per
run, each committed on its own).
"""

from __future__ import annotations

import sys

import psycopg

# The pending runs' index leads with the pipeline: a loop written for this table names it.
CLAIM = """
    UPDATE runs SET status = 'running', attempt = attempt + 1, worker_id = 'plain', started_at = now(),
                    heartbeat_at = now()
    WHERE id IN (SELECT id FROM runs WHERE status = 'pending' AND run_at <= now() AND pipeline = 'bench.noop'
                 ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING id
"""
COMPLETE = "UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)"
COPY = "COPY runs (pipeline, params) FROM STDIN"
INSERT = "INSERT INTO runs (pipeline, params) VALUES (%s, %s) RETURNING id"


def copy_runs(url: str, count: int, batch: int = 5_000) -> None:
    with psycopg.connect(url) as conn:
        for start in range(0, count, batch):
            with conn.transaction(), conn.cursor().copy(COPY) as copy:
                for _ in range(min(batch, count - start)):
                    copy.write_row(("bench.noop", "{}"))


def insert_runs(url: str, count: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(count):
            conn.execute(INSERT, ("bench.noop", "{}")).fetchone()


def main(url: str, batch: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            ids = [row[0] for row in conn.execute(CLAIM, (batch,))]
            if not ids:
                return 0
            conn.execute(COMPLETE, (ids,))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
