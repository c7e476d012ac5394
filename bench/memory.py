"""What executors cost: memory per process of an idle worker, the time to replace an executor
after a kill, and a storm of runs that all pass their time limit.

- **Memory**: a worker of the benchmark's concurrency with the demo and the benchmark pipelines
  loaded, idle after 20 runs; the proportional set size (PSS, ``/proc/PID/smaps_rollup``: shared
  pages divided among the processes that share them) of the worker and of every process below it
  (the fork server, the executors, the reaper).
- **Restart**: the executor pool alone (no database): a run killed at a 50 ms limit, then the time
  from its timeout being reported to its replacement being ready for the next run.
- **Storm**: 40 runs of ``bench.hang`` (a 0.2 s limit, one attempt) at the benchmark's concurrency
  through a real worker, from the first start to the last end on the database's clock; ideally
  40 / concurrency x 0.2 s.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from app.database import Database
from app.executor import ChildConfig, ExecutorPool
from app.queries import ClaimedRun
from bench.cpu import descendants


def pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class Memory:
    """PSS in MB: the worker, its fork server, each executor, and everything together."""

    worker: float
    server: float
    executors: list[float]
    total: float

    def describe(self) -> str:
        each = ", ".join(f"{mb:.1f}" for mb in self.executors)
        return (
            f"worker {self.worker:.1f}, fork server {self.server:.1f}, executors {each};"
            f" {self.total:.1f} MB in all ({len(self.executors) + 2 + 1} processes with the reaper)"
        )


def worker_memory(worker: int) -> Memory:
    """The PSS of worker process ``worker`` and of every process below it."""
    below = descendants(worker)
    server = next((pid for pid in below if "app.executor.forkserver" in _command(pid)), None)
    executors = descendants(server) if server else [pid for pid in below if "spawn_main" in _command(pid)]
    mb = {pid: pss_kib(pid) / 1024 for pid in [worker, *below]}
    return Memory(
        worker=mb[worker],
        server=mb.get(server, 0.0) if server else 0.0,
        executors=[mb.get(pid, 0.0) for pid in executors],
        total=sum(mb.values()),
    )


LIMIT = 0.05


def restart_ms(url: str, samples: int = 20) -> float:
    """The median time from a run's time limit to its executor's replacement being ready for
    the next run (the kill, noticing it, the fork and the new executor's start)."""
    pool = ExecutorPool(1, ChildConfig("bench", Database(url, url, False), ("bench.pipelines",), "warning"))
    pool.on_kill = lambda: None
    pool.start()
    times = []
    try:
        _drive(pool, lambda outcomes: pool.free == 1)
        for n in range(samples):
            handed = time.perf_counter()
            pool.hand_over(deque([ClaimedRun(n, "bench.hang", "{}", 1, 1, LIMIT)]))
            _drive(pool, _ended_and_replaced(pool))
            times.append((time.perf_counter() - handed - LIMIT) * 1000)
    finally:
        pool.close()
    return statistics.median(times)


def _ended_and_replaced(pool: ExecutorPool) -> Callable[[list[object]], bool]:
    ended: list[object] = []

    def done(outcomes: list[object]) -> bool:
        ended.extend(outcomes)
        return bool(ended) and pool.free == 1

    return done


def _drive(pool: ExecutorPool, done: Callable[[list[object]], bool], timeout: float = 30) -> None:
    """As the worker's loop: wait on the executors, collect, enforce limits; until ``done``."""
    deadline = time.monotonic() + timeout
    while True:
        outcomes: list[object] = [*pool.collect(wait(pool.connections(), 0.001)), *pool.expire()]
        if done(outcomes):
            return
        if time.monotonic() > deadline:
            raise SystemExit("bench: the executor pool did not get there")
