"""Scenario 10 (long mode only): a sustained load while a long transaction pins the xmin horizon.

For a third of the run a REPEATABLE READ transaction stays open, so vacuum cannot remove dead
tuples. Reported: pickup latency p99 before, during and after it, dead tuples in ``runs``, and the
workers' memory after warm-up and at the end. ``ORBIT_SOAK_SECONDS`` sets the length (900).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import Engine, text

from app import enqueue_many
from app.database import libpq_url

Spawn = Callable[..., subprocess.Popen[str]]
SECONDS = float(os.environ.get("ORBIT_SOAK_SECONDS", "900"))
RATE = 100  # runs per second


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _p99_pickup_ms(engine: Engine, since: float, until: float) -> float:
    with engine.connect() as conn:
        values = conn.execute(
            text("""SELECT 1000 * EXTRACT(EPOCH FROM started_at - run_at) FROM runs
                    WHERE run_at >= to_timestamp(:since) AND run_at < to_timestamp(:until)
                      AND started_at IS NOT NULL"""),
            {"since": since, "until": until},
        ).scalars()
        samples = sorted(float(v) for v in values)
    return round(samples[int(0.99 * (len(samples) - 1))], 1) if samples else float("nan")


def _dead_tuples(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'runs'")
            ).scalar_one()
        )


@pytest.mark.slow
def test_a_long_transaction_slows_nothing_for_good(
    engine: Engine, spawn_worker: Spawn, figures: Callable[..., None]
) -> None:
    workers = [spawn_worker("--concurrency", "2", env={"POLL_INTERVAL": "1s"}) for _ in range(2)]
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            with engine.begin() as conn:
                enqueue_many([("test.noop", {}) for _ in range(RATE // 10)], connection=conn)
            stop.wait(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    start = time.time()
    third = SECONDS / 3
    producer.start()
    try:
        stop.wait(min(60.0, third / 2))  # warm-up
        rss_warm = [_rss_kib(w.pid) for w in workers]
        # A client of its own, as the application that forgets a transaction would be: Orbit's
        # connections end a transaction left idle past their statement timeout.
        url = libpq_url(engine.url.render_as_string(hide_password=False))
        with psycopg.connect(url, autocommit=True) as holder:
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM runs")  # takes the snapshot
            stop.wait(max(0.0, start + third - time.time()))
            stop.wait(third)
            dead_during = _dead_tuples(engine)
            holder.execute("COMMIT")
        stop.wait(third)
    finally:
        stop.set()
        producer.join(timeout=30)
    rss_end = [_rss_kib(w.pid) for w in workers]
    before = _p99_pickup_ms(engine, start + third / 2, start + third)
    during = _p99_pickup_ms(engine, start + third, start + 2 * third)
    after = _p99_pickup_ms(engine, start + 2.5 * third, start + 3 * third)
    growth = max((end - warm) / warm for warm, end in zip(rss_warm, rss_end, strict=True))
    figures(
        seconds=SECONDS, rate=RATE, p99_pickup_ms_before=before, p99_during=during, p99_after=after,
        dead_tuples_during=dead_during, dead_tuples_end=_dead_tuples(engine),
        rss_kib_warm=rss_warm, rss_kib_end=rss_end, rss_growth=f"{growth:.1%}",
    )  # fmt: skip
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    assert growth < 0.10
    assert after <= max(2 * before, before + 50), "pickup latency did not come back after the transaction"
