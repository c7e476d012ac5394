"""Where a drain's CPU goes: seconds of CPU per run by process kind, and the WAL per run.

The workers are started and warmed up with their pipeline paused; the backlog is enqueued; then
the counters are read, the pipeline unpaused (and the workers woken), and the counters read again
once every run succeeded. What is counted, from ``/proc``:

- **worker**: the worker processes themselves (``python -m app.worker``);
- **executors**: every process below them (executors, and the small helpers a worker starts);
- **PostgreSQL**: the postmaster and all its processes, when the server runs on this machine
  (its backends, the WAL writer, autovacuum...).

WAL from ``pg_current_wal_lsn()`` and ``pg_stat_wal`` (records, full-page images); buffers from
``pg_stat_database`` (hits and reads of the scratch database).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User and system CPU of ``pid`` so far (0 when it is gone); with ``reaped``, that of the
    children it waited for as well (a postmaster's backends that exited, say)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = [int(f) for f in stat[stat.rindex(")") + 2 :].split()[11:15]]  # utime, stime, cutime, cstime
    return sum(fields if reaped else fields[:2]) / _TICK


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from the kernel's list of each task's children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


@dataclass(frozen=True)
class Counters:
    worker: float
    executors: float
    postgres: float | None
    wal_bytes: int
    wal_records: int
    wal_fpi: int
    buffers: int
    commits: int


@dataclass(frozen=True)
class Profile:
    """Per run: CPU in microseconds by process kind, WAL bytes, records and full pages, buffers."""

    runs: int
    worker_us: float
    executors_us: float
    postgres_us: float | None
    wal_bytes: float
    wal_records: float
    wal_fpi: float
    buffers: float
    commits: float

    def describe(self) -> str:
        pg = "n/a (remote server)" if self.postgres_us is None else f"{self.postgres_us:,.0f}"
        return (
            f"worker {self.worker_us:,.0f}, executors {self.executors_us:,.0f}, PostgreSQL {pg} us of CPU;"
            f" WAL {self.wal_bytes:,.0f} bytes ({self.wal_records:.1f} records,"
            f" {self.wal_fpi:.2f} full pages), {self.buffers:.1f} buffers, {self.commits:.3f} commits"
        )


class Sampler:
    """Reads the counters of a fleet of worker processes and of the server behind ``engine``."""

    def __init__(self, engine: Engine, workers: list[int], *, children: bool = False) -> None:
        """``workers``: the pids to count as workers; with ``children``, the processes this one
        started and waited for are counted as workers instead (a loop that exits when done)."""
        self.engine = engine
        self.workers = workers
        self.children = children
        self.postmaster = self._postmaster()

    def _postmaster(self) -> int | None:
        with self.engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        try:
            stat = Path(f"/proc/{backend}/stat").read_text()
        except OSError:
            return None  # the server is not on this machine
        return int(stat[stat.rindex(")") + 2 :].split()[1])

    def read(self) -> Counters:
        below = [pid for worker in self.workers for pid in descendants(worker)]
        postgres = None
        if self.postmaster is not None:
            live = descendants(self.postmaster)
            postgres = cpu_seconds(self.postmaster, reaped=True) + sum(cpu_seconds(pid) for pid in live)
        with self.engine.connect() as conn:
            if conn.dialect.server_version_info >= (15,):  # type: ignore[operator]
                conn.execute(text("SELECT pg_stat_force_next_flush()"))
            wal = conn.execute(
                text("""SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS bytes,
                               wal_records, wal_fpi FROM pg_stat_wal""")
            ).one()
            buffers, commits = conn.execute(
                text("""SELECT blks_hit + blks_read, xact_commit FROM pg_stat_database
                        WHERE datname = current_database()""")
            ).one()
        if self.children:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            worker = usage.ru_utime + usage.ru_stime
        else:
            worker = sum(cpu_seconds(pid) for pid in self.workers)
        return Counters(
            worker=worker,
            executors=sum(cpu_seconds(pid) for pid in below)
            + sum(cpu_seconds(pid, reaped=True) - cpu_seconds(pid) for pid in self.workers),
            postgres=postgres,
            wal_bytes=int(wal.bytes),
            wal_records=int(wal.wal_records),
            wal_fpi=int(wal.wal_fpi),
            buffers=int(buffers),
            commits=int(commits),
        )


def profile(before: Counters, after: Counters, runs: int) -> Profile:
    def per_run(a: float, b: float) -> float:
        return (b - a) / runs

    postgres = None
    if before.postgres is not None and after.postgres is not None:
        postgres = per_run(before.postgres, after.postgres) * 1e6
    return Profile(
        runs=runs,
        worker_us=per_run(before.worker, after.worker) * 1e6,
        executors_us=per_run(before.executors, after.executors) * 1e6,
        postgres_us=postgres,
        wal_bytes=per_run(before.wal_bytes, after.wal_bytes),
        wal_records=per_run(before.wal_records, after.wal_records),
        wal_fpi=per_run(before.wal_fpi, after.wal_fpi),
        buffers=per_run(before.buffers, after.buffers),
        commits=per_run(before.commits, after.commits),
    )


def measured(sampler: Sampler, runs: int, release: Callable[[], None], done: Callable[[], None]) -> Profile:
    """The profile of what happens between ``release()`` and the return of ``done()``."""
    before = sampler.read()
    release()
    done()
    return profile(before, sampler.read(), runs)
