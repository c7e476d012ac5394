"""The ceiling: a bare psycopg loop that claims and completes runs with two statements and nothing else.

``python -m bench.plain URL BATCH`` claims up to BATCH pending runs, marks them succeeded, and
repeats until a claim comes back empty. No executor, no fencing, no heartbeat, no time limit.
"""

from __future__ import annotations

import sys

import psycopg

CLAIM = """
    UPDATE runs SET status = 'running', attempt = attempt + 1, worker_id = 'plain', started_at = now(),
                    heartbeat_at = now()
    WHERE id IN (SELECT id FROM runs WHERE status = 'pending' AND run_at <= now()
                 ORDER BY priority DESC, run_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING id
"""
COMPLETE = "UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)"


def main(url: str, batch: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            ids = [row[0] for row in conn.execute(CLAIM, (batch,))]
            if not ids:
                return 0
            conn.execute(COMPLETE, (ids,))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
