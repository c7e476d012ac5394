"""Scenario 3: workers killed with SIGKILL under load and restarted, as supervisord would."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text

from app import enqueue_many
from tests.reliability.conftest import FULL_SIZE, size
from tests.support.waiting import wait_until

Spawn = Callable[..., subprocess.Popen[str]]
HEARTBEAT, STALE_AFTER, RESCUE = (
    timedelta(milliseconds=200),
    timedelta(milliseconds=600),
    timedelta(milliseconds=500),
)
BOUND = HEARTBEAT + STALE_AFTER + RESCUE
ENV = {"RECOVERY_INTERVAL": "500ms", "HEARTBEAT_INTERVAL": "200ms", "STALE_AFTER": "600ms"}


def _succeeded(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs WHERE status = 'succeeded'")).scalar_one())


def _held(engine: Engine, worker: subprocess.Popen[str]) -> tuple[datetime, list[int]]:
    """The database's clock and the runs the worker holds, just before it is killed."""
    with engine.connect() as conn:
        now = conn.execute(text("SELECT now()")).scalar_one()
        rows = conn.execute(
            text("SELECT id FROM runs WHERE status = 'running' AND worker_id = :w"),
            {"w": f"{socket.gethostname()}:{worker.pid}"},
        )
        return now, [row.id for row in rows]


def _recovered_at(engine: Engine) -> dict[int, list[datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("""SELECT id, (e->>'at')::timestamptz AS at FROM runs, jsonb_array_elements(errors) e
                    WHERE e->>'kind' = 'interrupted' ORDER BY at""")
        )
        recovered: dict[int, list[datetime]] = {}
        for row in rows:
            recovered.setdefault(row.id, []).append(row.at)
        return recovered


def test_sigkilled_workers_lose_no_run_and_recover_within_the_bound(
    engine: Engine, spawn_worker: Spawn, tmp_path: Path, figures: Callable[..., None]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    processes, runs, kills = size(2, 4), size(30, 300), size(4, 20)
    low, high = (0.5, 3.0) if FULL_SIZE else (0.2, 0.6)
    log = tmp_path / "work.log"
    with engine.begin() as conn:
        enqueue_many(
            [("test.work", {"seconds": rng.uniform(low, high), "log": str(log)}) for _ in range(runs)],
            connection=conn,
        )
    workers = [spawn_worker("--concurrency", "2", env=ENV) for _ in range(processes)]
    in_flight: list[tuple[datetime, list[int]]] = []
    for k in range(kills):
        wait_until(lambda k=k: _succeeded(engine) >= k * runs // (kills + 1), timeout=300, what="progress")
        slot = wait_until(
            lambda: [i for i, w in enumerate(workers) if _held(engine, w)[1]], what="a worker holding runs"
        )
        victim = rng.choice(slot)
        killed_at, _ = _held(engine, workers[victim])
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=30)
        # Read after the kill: a dead worker changes nothing, and its runs stay `running` until
        # they go stale, so this is exactly what it held when it died.
        in_flight.append((killed_at, _held(engine, workers[victim])[1]))
        workers[victim] = spawn_worker("--concurrency", "2", env=ENV)
    wait_until(lambda: _succeeded(engine) == runs, timeout=600, what="every run to succeed")

    starts = Counter(
        int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start")
    )
    extra = sum(starts.values()) - runs
    interrupted = sum(len(held) for _, held in in_flight)
    recovered = _recovered_at(engine)
    delays = [
        min(at for at in recovered.get(run_id, []) if at >= killed_at) - killed_at
        for killed_at, held in in_flight
        for run_id in held
    ]
    worst = max(delays, default=timedelta(0))
    figures(
        seed=seed, runs=runs, kills=kills, lost=runs - _succeeded(engine), extra_executions=extra,
        in_flight_at_kills=interrupted, worst_recovery_s=round(worst.total_seconds(), 2),
        bound_s=BOUND.total_seconds(),
    )  # fmt: skip
    assert len(starts) == runs, "some run never started"
    assert 0 <= extra <= interrupted
    # The bound is measured on the database's clock; the margin covers a loaded 2-core machine.
    assert worst <= BOUND + timedelta(seconds=2), f"recovery took {worst}, bound {BOUND} (seed {seed})"
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
