"""The executor alone: a no-op run's round trip through the pool, with the hard time limit armed.

No database: runs are made up and handed to ``ExecutorPool`` as the worker does, so the figure is
what the executor processes and their sockets cost per run.
"""

from __future__ import annotations

import time
from collections import deque
from multiprocessing.connection import wait

from app.database import Database
from app.executor import ChildConfig, ExecutorPool
from app.queries import ClaimedRun


def round_trip_us(url: str, concurrency: int, runs: int, depth: int = 1) -> float:
    """Microseconds per no-op run, from hand-over to outcome, with ``concurrency`` executors busy
    and up to ``depth`` runs handed to each at a time."""
    pool = ExecutorPool(
        concurrency, ChildConfig("bench", Database(url, url, False), ("bench.pipelines",), "warning")
    )
    pool.start()
    try:
        deadline = time.monotonic() + 60
        while pool.free < concurrency and time.monotonic() < deadline:
            pool.collect(wait(pool.connections(), 1.0))
        todo = deque(ClaimedRun(i, "bench.noop", "{}", 1, 1, 60.0) for i in range(runs))
        started, done = time.perf_counter(), 0
        while done < runs:
            pool.hand_over(todo, depth)
            done += len(pool.collect(wait(pool.connections(), 1.0)))
        return (time.perf_counter() - started) / runs * 1e6
    finally:
        pool.close()
