"""A bare claiming loop in its own process: ``python -m tests.support.claimer URL BATCH GATE``.

It announces itself by creating ``GATE/<pid>.ready`` and starts when ``GATE/go`` exists, so that
all claimers race from the same moment.

Claims up to BATCH runs with the worker's own claim statement, logs each execution as
(run_id, attempt, pid) in the side table, completes them with the worker's fenced completion,
and exits once a claim comes back empty. Several of these race to prove the claim is exclusive.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sqlalchemy import text

from app import queries
from app.database import make_engine

_LOG = text(
    "INSERT INTO executions (run_id, attempt, pid, note) SELECT unnest(:ids), unnest(:attempts), :pid, ''"
)


def _wait_for_the_start(gate: Path) -> None:
    (gate / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + 120
    while not (gate / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def main(url: str, batch: int, gate: Path) -> int:
    engine = make_engine(url, pool_size=1)
    with engine.connect():
        pass  # connected before the start, like a running worker
    _wait_for_the_start(gate)
    me = f"claimer-{os.getpid()}"
    defaults = {"test.noop": (3, 60.0)}
    while True:
        with engine.begin() as conn:
            _, runs = queries.exchange(conn, worker_id=me, limit=batch, defaults=defaults)
        if not runs:
            return 0
        with engine.begin() as conn:
            conn.execute(
                _LOG, {"ids": [r.id for r in runs], "attempts": [r.attempt for r in runs], "pid": os.getpid()}
            )
            done = [queries.Success(r.id, r.attempt, "null") for r in runs]
            written, _ = queries.exchange(conn, worker_id=me, successes=done)
            if len(written) != len(runs):
                return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
