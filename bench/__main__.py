"""Orbit's benchmark: enqueue (also over HTTP), drain, pickup latency, claim cost and executor overhead.

``python -m bench`` (``make bench``) runs against the configured server (``DATABASE_URL``, else the
embedded one) in a scratch database it creates and drops on ``DIRECT_URL``, so it never touches
your data. Through PgBouncer (``?pgbouncer=true``), Orbit's processes reach the scratch database
through the pooler, which must serve any database name (a ``*`` entry); the plain loops, the
ceiling, always go direct.
``--quick`` is a smoke run with tiny counts (CI uses it to check the benchmark works, not a speed).
Durations come from the database's clock (``started_at``, ``finished_at``), so worker start-up
is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

import bench.pipelines  # noqa: F401  (registers the bench pipelines for enqueue)
from app import enqueue, enqueue_many, queries
from app.database import Database, libpq_url, make_engine, migrate, resolve
from app.limits import Limits, limits
from app.queries.common import RUNS_CHANNEL
from app.settings import load_settings_or_exit
from app.testing import scratch_database
from bench import cpu, executor, http, memory, plain
from tests.support.claim_plan import explain_claim

NOOP = {"bench.noop": (3, 60.0)}
LIMITED = "bench.capped"  # concurrency 2 (bench/pipelines.py)
# Limits that all apply but never bind a claim of 10: what the claim pays for flow control.
LIMITS = {"bench.noop": limits(concurrency=100_000, rate="1000000/s", group_concurrency=1_000)}
# Claimed runs made pending again, as they were, between two claims the benchmark times.
_PUT_BACK = text(
    "UPDATE runs SET status = 'pending', attempt = 0, worker_id = NULL, started_at = NULL,"
    " heartbeat_at = NULL, code_version = NULL, max_attempts = NULL, timeout = NULL WHERE id = ANY(:ids)"
)


@dataclass(frozen=True)
class Size:
    jobs: int
    single: int
    pickups: int
    work_jobs: int
    processes: tuple[int, ...]
    big_table: bool
    api_requests: int = 1_000
    api_batches: int = 5


FULL = Size(jobs=20_000, single=2_000, pickups=200, work_jobs=2_000, processes=(1, 2, 4, 8), big_table=True)
QUICK = Size(
    jobs=300,
    single=30,
    pickups=10,
    work_jobs=40,
    processes=(1, 2),
    big_table=False,
    api_requests=50,
    api_batches=2,
)
EXECUTOR_RUNS = 20_000
STORM_RUNS = 40
API_BATCH = 1_000


@dataclass(frozen=True)
class Row:
    figure: str
    orbit: str
    reference: str = ""


class Bench:
    def __init__(self, database: Database, size: Size, concurrency: int, workdir: Path) -> None:
        self.database = database
        self.url = database.direct_url
        self.size = size
        self.concurrency = concurrency
        self.engine: Engine = make_engine(self.url)
        self.workdir = workdir
        self.env = {
            **os.environ,
            "DATABASE_URL": database.setting_url,
            "DIRECT_URL": database.direct_url,
            "ORBIT_PIPELINES": "bench.pipelines",
            # Default settings otherwise: workers log two lines per run, to the files as well.
            "LOG_LEVEL": "info",
            "LOG_FORMAT": "json",
            "LOGS_DIR": str(workdir),
            "METRICS_INTERVAL": "1h",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }

    # --- helpers ---------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE runs, run_steps, workers, run_starts RESTART IDENTITY CASCADE"))

    def fill(self, count: int, pipeline: str = "bench.noop") -> None:
        self._enqueue_all(_batches(count, pipeline))

    def _enqueue_all(self, batches: list[list[tuple[str, dict[str, object]]]]) -> None:
        for batch in batches:
            with self.engine.begin() as conn:
                enqueue_many(batch, connection=conn)

    def span_rate(self, after_id: int = 0) -> float:
        """Runs per second between the first start and the last finish, on the database's clock."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("""SELECT count(*) AS n, EXTRACT(EPOCH FROM max(finished_at) - min(started_at)) AS s
                        FROM runs WHERE status = 'succeeded' AND id > :after_id AND pipeline <> :limited"""),
                {"after_id": after_id, "limited": LIMITED},
            ).one()
        return float(row.n) / max(float(row.s or 0), 1e-6)

    def spawn(self, args: list[str], count: int) -> list[subprocess.Popen[bytes]]:
        return [
            subprocess.Popen(
                [sys.executable, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(count)
        ]

    def finish(self, procs: list[subprocess.Popen[bytes]], what: str) -> None:
        codes = [proc.wait(timeout=900) for proc in procs]
        if codes != [0] * len(procs):
            errors = [
                line for log in self.workdir.glob("*error.log") for line in log.read_text().splitlines()
            ]
            raise SystemExit(f"bench: {what} exited with {codes}; last errors: {errors[-3:]}")

    def drain(
        self, processes: int, concurrency: int, pipeline: str = "bench.noop", jobs: int = 0, limited: int = 0
    ) -> float:
        """A running, warmed-up fleet gets a backlog at once; runs per second until it is done.

        Worker start-up is left out: on two cores, starting eight workers and their executors
        costs more CPU than draining 20,000 runs, and would be measured instead of the drain.
        With ``limited``, that many runs of bench.capped (2 at once, fleet-wide) wait beside the
        backlog; only the backlog's runs are counted.
        """
        jobs = jobs or self.size.jobs
        with self.fleet(processes, concurrency) as (warm_up, _):
            if limited:
                self.fill(limited, LIMITED)
            self.fill(jobs, pipeline)
            _wait(lambda: self._succeeded() == warm_up + jobs, "the drain", timeout=900, every=0.05)
        return self.span_rate(after_id=warm_up)

    @contextlib.contextmanager
    def fleet(self, processes: int, concurrency: int) -> Iterator[tuple[int, list[int]]]:
        """An empty queue and ``processes`` workers, registered and warmed up (four runs per
        executor); yields how many warm-up runs there were and the workers' pids, and stops the
        workers after."""
        self.reset()
        workers = self.spawn(["-m", "app.worker", "--concurrency", str(concurrency)], processes)
        try:
            _wait(lambda: self._count("SELECT count(*) FROM workers") == processes, "workers to register")
            warm_up = processes * concurrency * 4
            self.fill(warm_up)
            _wait(lambda: self._succeeded() == warm_up, "the warm-up runs", every=0.02)
            yield warm_up, [worker.pid for worker in workers]
        finally:
            for worker in workers:
                worker.terminate()
            self.finish(workers, "a worker")

    def drain_profile(self, processes: int, concurrency: int) -> cpu.Profile:
        """A drain as in ``drain``, with the CPU of each kind of process and the WAL it cost, per
        run (bench/cpu.py): the backlog is enqueued while the pipeline is paused, and counted
        from the moment the pause is lifted."""
        jobs = self.size.jobs
        with self.fleet(processes, concurrency) as (warm_up, pids):
            with self.engine.begin() as conn:
                queries.pause(conn, "bench.noop", "bench.noop", "bench")
            self.fill(jobs)

            def release() -> None:
                with self.engine.begin() as conn:
                    queries.unpause(conn, "bench.noop")
                    conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": RUNS_CHANNEL})

            def done() -> None:
                _wait(lambda: self._succeeded() == warm_up + jobs, "the drain", timeout=900, every=0.05)

            sampler = cpu.Sampler(self.engine, pids)
            return cpu.measured(sampler, jobs, release, done)

    def plain_profile(self, batch: int, processes: int = 2) -> cpu.Profile:
        """The plain loop's CPU and WAL per run, as ``drain_profile`` measures Orbit's; the loops
        are counted once they exited, as children of this process (their start-up included: a
        few microseconds a run)."""
        self.reset()
        self.fill(self.size.jobs)
        sampler = cpu.Sampler(self.engine, [], children=True)

        def release() -> None:
            procs = self.spawn(["-m", "bench.plain", libpq_url(self.url), str(batch)], processes)
            self.finish(procs, "bench.plain")

        return cpu.measured(sampler, self.size.jobs, release, lambda: None)

    def memory(self, concurrency: int) -> memory.Memory:
        """An idle worker's processes after 20 runs (bench/memory.py)."""
        self.reset()
        (worker,) = self.spawn(["-m", "app.worker", "--concurrency", str(concurrency)], 1)
        try:
            _wait(lambda: self._count("SELECT count(*) FROM workers") == 1, "the worker to register")
            self.fill(20)
            _wait(lambda: self._succeeded() == 20, "20 runs", every=0.02)
            return memory.worker_memory(worker.pid)
        finally:
            worker.terminate()
            self.finish([worker], "a worker")

    def storm(self, concurrency: int, runs: int = STORM_RUNS) -> float:
        """Seconds from the first start to the last end of ``runs`` runs that all pass their
        0.2 s limit, through one worker (bench/memory.py)."""
        self.reset()
        (worker,) = self.spawn(["-m", "app.worker", "--concurrency", str(concurrency)], 1)
        try:
            _wait(lambda: self._count("SELECT count(*) FROM workers") == 1, "the worker to register")
            self.fill(runs, "bench.hang")
            _wait(
                lambda: self._count("SELECT count(*) FROM runs WHERE status = 'timed_out'") == runs,
                "the storm",
                every=0.05,
            )
        finally:
            worker.terminate()
            self.finish([worker], "a worker")
        with self.engine.connect() as conn:
            return float(
                conn.execute(
                    text("SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at)) FROM runs")
                ).scalar_one()
            )

    def _succeeded(self) -> int:
        return self._count(
            f"SELECT count(*) FROM runs WHERE status = 'succeeded' AND pipeline <> '{LIMITED}'"
        )

    def plain(self, batch: int, processes: int = 2) -> float:
        self.reset()
        self.fill(self.size.jobs)
        self.finish(
            self.spawn(["-m", "bench.plain", libpq_url(self.url), str(batch)], processes), "bench.plain"
        )
        return self.span_rate()

    # --- figures ---------------------------------------------------------------------------------

    def enqueue_rates(self) -> dict[str, float]:
        """Runs per second: Orbit's batch and single enqueue, and the plain psycopg loops.

        The batches' ``(pipeline, params)`` pairs are the caller's data: they are built before the
        clock starts, as the plain loop's constant rows need no building.
        """
        size, rates = self.size, {}
        batches = _batches(size.jobs, "bench.noop")
        actions: tuple[tuple[str, Callable[[], None], int], ...] = (
            ("batch", lambda: self._enqueue_all(batches), size.jobs),
            ("plain batch", lambda: plain.copy_runs(libpq_url(self.url), size.jobs), size.jobs),
            ("single", lambda: self._single(size.single, own=True), size.single),
            ("single in transaction", lambda: self._single(size.single, own=False), size.single),
            ("plain single", lambda: plain.insert_runs(libpq_url(self.url), size.single), size.single),
        )
        for name, action, count in actions:
            self.reset()
            started = time.perf_counter()
            action()
            rates[name] = count / (time.perf_counter() - started)
        return rates

    def _single(self, count: int, *, own: bool) -> None:
        """``enqueue()`` committing each run itself, or inside the caller's transaction."""
        for _ in range(count):
            if own:
                enqueue("bench.noop", {})
            else:
                with self.engine.begin() as conn:
                    enqueue("bench.noop", {}, connection=conn)

    def http_api(self) -> tuple[http.Singles, float, float, int | None]:
        """``orbit serve``'s ``POST /queue/enqueue``, one run per request and a batch per request,
        and ``enqueue()`` at the same concurrency (see bench/http.py): the single requests, and
        the runs per second of ``enqueue()`` and of the batch, and the server's exit status on
        SIGTERM. The runs are removed afterwards."""
        size = self.size
        # Not throttled by the per-token write limit; no audit line per request.
        env = {**self.env, "LOG_LEVEL": "warning", "SERVE_WRITE_RATE": "10000000"}
        self.reset()
        with http.serving(env, self.engine, lambda procs: self.finish(procs, "orbit serve")) as api:
            singles = http.singles(api, size.api_requests)
            answered = size.api_requests + http.CLIENTS - singles.failures.total()  # with the warm-ups
            if self._count("SELECT count(*) FROM runs") != answered:
                raise SystemExit(f"bench: the API answered 201 {answered} times, runs has another count")
            self.reset()
            batch = http.batch(api, API_BATCH, size.api_batches)
        self.reset()
        engine = self.database.engine(pool_size=http.CLIENTS)
        try:
            python = http.python_enqueue(engine, size.api_requests)
        finally:
            engine.dispose()
        self.reset()
        return singles, python, batch, api.exit_code

    def pickup_ms(self) -> tuple[list[float], list[float]]:
        """Enqueue one run at a time to an idle fleet of two workers, in ms: enqueue to the
        pipeline's start (this host's clock) and enqueue to the claim (the database's clock)."""
        self.reset()
        workers = self.spawn(["-m", "app.worker", "--concurrency", "2"], 2)
        try:
            _wait(lambda: self._count("SELECT count(*) FROM workers") == 2, "workers to register")
            starts, claims = [], []
            for _ in range(self.size.pickups + 1):
                enqueued = time.time()
                run_id = enqueue("bench.stamp", {})
                _wait(functools.partial(self._finished, run_id), "a run to finish")
                started, claimed = self._pickup(run_id)
                starts.append((started - enqueued) * 1000)
                claims.append(claimed)
            return starts[1:], claims[1:]  # the first wakes a cold executor
        finally:
            for worker in workers:
                worker.terminate()
            self.finish(workers, "a worker")

    def claim_ms(self, flow: Mapping[str, Limits] | None = None) -> float:
        """The median time of a claim of 10 as a worker's turn: on one connection in autocommit,
        committed, its statements prepared as psycopg does after five turns (a rollback would
        drop them, and every claim would be planned again); the 10 are put back pending, out of
        the clock. With ``flow``, under those limits (which must leave room for the 10), else as
        a worker with no limit claims (the limits table empty: the claim without flow control)."""
        samples = []
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for _ in range(110):
                started = time.perf_counter()
                _, claimed = queries.exchange(
                    conn,
                    worker_id="bench",
                    limit=10,
                    defaults=NOOP,
                    version="bench",
                    limits=flow,
                    overrides=bool(flow),
                )
                samples.append((time.perf_counter() - started) * 1000)
                conn.execute(_PUT_BACK, {"ids": [run.id for run in claimed]})
        return statistics.median(samples[10:])

    def grow_table(self) -> None:
        """1,000,000 finished and 100,000 pending runs, then VACUUM ANALYZE as autovacuum would."""
        with self.engine.begin() as conn:
            conn.execute(
                text("""INSERT INTO runs (pipeline, status, attempt, max_attempts, started_at, finished_at,
                                          worker_id, result)
                        SELECT 'bench.noop', 'succeeded', 1, 3, now(), now(), 'old', 'null'
                        FROM generate_series(1, 1000000)""")
            )
            conn.execute(
                text("INSERT INTO runs (pipeline) SELECT 'bench.noop' FROM generate_series(1, 100000)")
            )
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE runs"))

    def explain(self) -> str:
        with self.engine.connect() as conn, conn.begin():
            plan = explain_claim(conn, limit=10, defaults=NOOP)
        scans = [line.strip() for line in plan if " on runs " in line and "Scan" in line]
        buffers = next((line.strip() for line in plan if "Buffers:" in line), "")
        return f"{scans[0] if scans else plan[0]}; {buffers}"

    def dead_tuples(self) -> int:
        with self.engine.connect() as conn:
            if conn.dialect.server_version_info >= (15,):  # type: ignore[operator]
                conn.execute(text("SELECT pg_stat_force_next_flush()"))
            return self._count("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'runs'")

    def server(self) -> str:
        """The server's version, its JIT setting, and whether Orbit goes through a pooler."""
        with self.engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            jit = conn.execute(text("SHOW jit")).scalar_one()
            available = conn.execute(text("SELECT pg_jit_available()")).scalar_one()
        pooled = ", through PgBouncer" if self.database.pgbouncer else ""
        return f"PostgreSQL {version}, jit = {jit}{'' if available else ' (not built in)'}{pooled}"

    def _count(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def _finished(self, run_id: int) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(text("SELECT status FROM runs WHERE id = :id"), {"id": run_id}).scalar()
                == "succeeded"
            )

    def _pickup(self, run_id: int) -> tuple[float, float]:
        """When the pipeline started (its result), and ms from enqueue to claim (database clock)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text("""SELECT CAST(result AS text) AS started,
                               EXTRACT(EPOCH FROM started_at - created_at) * 1000 AS claim_ms
                        FROM runs WHERE id = :id"""),
                {"id": run_id},
            ).one()
        return float(row.started), float(row.claim_ms)

    def executor_us(self, concurrency: int) -> float:
        runs = EXECUTOR_RUNS if self.size.big_table else 200
        return executor.round_trip_us(self.url, concurrency, runs)


def _scratch(configured: Database, direct: str) -> Database:
    """The scratch database as the configured one is reached: direct, or through its pooler."""
    name = make_url(direct).database
    pooled = make_url(configured.url).set(database=name).render_as_string(hide_password=False)
    return dataclasses.replace(configured, url=pooled, direct_url=direct, embedded=False)


def _batches(count: int, pipeline: str) -> list[list[tuple[str, dict[str, object]]]]:
    """``count`` no-param runs of ``pipeline`` for enqueue_many, in batches of 5,000."""
    return [[(pipeline, {}) for _ in range(min(5_000, count - start))] for start in range(0, count, 5_000)]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120, every: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(every)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def _enqueue(bench: Bench) -> Iterator[Row]:
    rates = bench.enqueue_rates()
    batch, single = rates["batch"], rates["single"]
    yield Row(
        "batch enqueue, enqueue_many of 5,000 (jobs/s)",
        f"{batch:,.0f} ({batch / rates['plain batch']:.0%} of plain)",
        "target >= 80% of plain; PgQueuer 22,000-36,000",
    )
    yield Row("batch enqueue, plain loop: COPY of 5,000 (jobs/s)", f"{rates['plain batch']:,.0f}")
    yield Row(
        "single enqueue, enqueue() (jobs/s)",
        f"{single:,.0f} ({single / rates['plain single']:.0%} of plain)",
        "target >= 80% of plain; PgQueuer 1,500-2,700",
    )
    in_transaction = rates["single in transaction"]
    yield Row("single enqueue, in the caller's transaction (jobs/s)", f"{in_transaction:,.0f}")
    yield Row("single enqueue, plain loop: one INSERT (jobs/s)", f"{rates['plain single']:,.0f}")


def _http(bench: Bench) -> Iterator[Row]:
    size = bench.size
    singles, python, api_batch, exit_code = bench.http_api()
    clients = http.CLIENTS
    yield Row(
        f"HTTP enqueue, 1 run per POST, {clients} keep-alive clients (requests/s)",
        f"{singles.rate:,.0f} ({singles.rate / python:.0%} of enqueue())",
        f"target >= 50% of enqueue() from {clients} threads",
    )
    latencies = singles.latencies_ms
    yield Row(
        "HTTP enqueue, 1 run per POST, p50 / p99 (ms)",
        f"{_percentile(latencies, 0.5):.1f} / {_percentile(latencies, 0.99):.1f}",
        "target p99 < 20",
    )
    failed = ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(singles.failures.items()))
    yield Row(
        "HTTP enqueue, answers other than 201",
        f"{singles.failures.total()}{f' ({failed})' if failed else ''}",
        "must be 0",
    )
    yield Row(f"single enqueue, enqueue() from {clients} threads (jobs/s)", f"{python:,.0f}")
    yield Row(
        f"HTTP batch enqueue, POST of {API_BATCH:,} runs (jobs/s, median of {size.api_batches})",
        f"{api_batch:,.0f}",
        "target >= 50,000",
    )
    killed = " (died by the signal, not exit 0)" if exit_code == -signal.SIGTERM else ""
    yield Row("HTTP API, orbit serve's exit status on SIGTERM", f"{exit_code}{killed}", "must be 0")


def _beside(bench: Bench, processes: int) -> Row:
    """The drain beside a capped backlog, as a share of the drain alone: three pairs, in turn
    first and second, of five times the usual backlog (a drain of 20,000 lasts under a second
    here, too short to see a few percent through the machine's noise)."""
    jobs, capped = bench.size.jobs * 5, bench.size.work_jobs
    shares = []
    for pair in range(3):
        order = (0, capped) if pair % 2 == 0 else (capped, 0)
        rates = {n: bench.drain(processes, bench.concurrency, jobs=jobs, limited=n) for n in order}
        shares.append(rates[capped] / rates[0])
    return Row(
        f"drain, {processes} processes, beside {capped:,} pending runs capped at 2 at once ({jobs:,} runs),"
        " share of the drain alone (median of 3 pairs, range)",
        f"{statistics.median(shares):.0%} ({min(shares):.0%}-{max(shares):.0%})",
        "the unlimited drain unchanged",
    )


def _drain(bench: Bench) -> Iterator[Row]:
    size, c = bench.size, bench.concurrency
    plain1, plain100 = bench.plain(1), bench.plain(100)
    for processes in size.processes:
        rate = bench.drain(processes, c)
        peers = "PgQueuer batch 50: 7,700-13,000; plain loop x100: 27,600-31,500" if processes == 2 else ""
        yield Row(f"drain, {processes} process(es) x concurrency {c} (jobs/s)", f"{rate:,.0f}", peers)
        if processes == 2:
            yield Row("dead tuples in runs right after that drain", f"{bench.dead_tuples():,}")
            yield _beside(bench, processes)
    yield Row("drain, plain loop claim 1 + complete 1, 2 processes (jobs/s)", f"{plain1:,.0f}", "2,300-3,000")
    yield Row(
        "drain, plain loop claim 100 + complete 100, 2 processes (jobs/s)",
        f"{plain100:,.0f}",
        "27,600-31,500",
    )
    one_by_one = bench.drain(1, 1)
    plain_one = bench.plain(1, processes=1)
    yield Row(
        "per-run time, 1 process x concurrency 1 (us)",
        f"{1e6 / one_by_one:,.0f}",
        f"plain loop claim 1 + complete 1, 1 process: {1e6 / plain_one:,.0f}",
    )


def _profile(bench: Bench) -> Iterator[Row]:
    c = bench.concurrency
    orbit = bench.drain_profile(2, c)
    yield Row(f"drain, 2 processes x concurrency {c}: per run", orbit.describe())
    plain100 = bench.plain_profile(100)
    yield Row("drain, plain loop claim 100 + complete 100, 2 processes: per run", plain100.describe())


def _work(bench: Bench) -> Iterator[Row]:
    c = bench.concurrency
    work = bench.drain(2, c, "bench.work10ms", bench.size.work_jobs)
    ideal = 2 * c * 100
    yield Row(
        f"10 ms pipeline, 2 processes x concurrency {c} (jobs/s)",
        f"{work:,.0f} ({work / ideal:.0%} of {ideal})",
        "target >= 95%",
    )


def _pickup(bench: Bench) -> Iterator[Row]:
    starts, claims = bench.pickup_ms()
    yield Row(
        "pickup, idle fleet, enqueue to pipeline start, p50 / p99 (ms)",
        f"{_percentile(starts, 0.5):.1f} / {_percentile(starts, 0.99):.1f}",
        "target < 2 / < 5; PgQueuer 3.3-5.2 / 6-49",
    )
    yield Row(
        "pickup, idle fleet, enqueue to claim, p50 / p99 (ms)",
        f"{_percentile(claims, 0.5):.1f} / {_percentile(claims, 0.99):.1f}",
    )


def _executor(bench: Bench) -> Iterator[Row]:
    for concurrency in (1, bench.concurrency):
        yield Row(
            f"executor round trip, no-op run, {concurrency} executor(s) (us per run)",
            f"{bench.executor_us(concurrency):,.0f}",
            "no database; hard time limit armed",
        )


def _executors(bench: Bench) -> Iterator[Row]:
    c = bench.concurrency
    used = bench.memory(c)
    yield Row(
        f"memory of an idle worker of concurrency {c}, PSS (MB)",
        used.describe(),
        "targets: <= 15 per executor, <= 150 in all",
    )
    yield Row(
        "executor replaced after a kill, ready for its next run (ms, median)",
        f"{memory.restart_ms(bench.url):.1f}",
        "target <= 50",
    )
    ideal = STORM_RUNS / c * 0.2
    storm = bench.storm(c)
    yield Row(
        f"{STORM_RUNS} runs past a 0.2 s limit, concurrency {c}, first start to last end (s)",
        f"{storm:.2f} ({storm / ideal:.2f}x the ideal {ideal:.1f})",
        "target <= 1.5x",
    )


def _claim(bench: Bench) -> Iterator[Row]:
    bench.reset()
    bench.fill(1_000)
    empty = bench.claim_ms()
    yield Row("claim of 10, 1,000 pending (ms, median)", f"{empty:.2f}")
    capped = bench.claim_ms(LIMITS)
    yield Row(
        "claim of 10, 1,000 pending, with a concurrency, a rate and group limits (ms, median)",
        f"{capped:.2f} ({capped / empty:.2f}x)",
        "target <= 1.5x",
    )
    if bench.size.big_table:
        bench.grow_table()
        big = bench.claim_ms()
        yield Row(
            "claim of 10, 1,000,000 finished + 100,000 pending (ms)",
            f"{big:.2f} ({big / empty:.2f}x)",
            "target <= 1.3x",
        )
        yield Row("claim plan", bench.explain())


# The benchmark's sections, in the order they run; `--only` picks some.
SECTIONS: dict[str, Callable[[Bench], Iterator[Row]]] = {
    "enqueue": _enqueue,
    "http": _http,
    "drain": _drain,
    "profile": _profile,
    "work": _work,
    "pickup": _pickup,
    "executor": _executor,
    "executors": _executors,
    "claim": _claim,
}


def measure(bench: Bench, sections: list[str]) -> Iterator[Row]:
    yield Row("server", bench.server())
    for name in sections:
        yield from SECTIONS[name](bench)


def _print(rows: list[Row]) -> None:
    widths = [max(len(r.figure) for r in rows), max(len(r.orbit) for r in rows)]
    print(f"| {'figure':<{widths[0]}} | {'Orbit':<{widths[1]}} | reference |")
    print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|---|")
    for r in rows:
        print(f"| {r.figure:<{widths[0]}} | {r.orbit:<{widths[1]}} | {r.reference} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the benchmark runs")
    parser.add_argument("--concurrency", type=int, default=4, help="runs at once per worker process")
    parser.add_argument("--jobs", type=int, help="runs per drain (default 20,000; 300 with --quick)")
    parser.add_argument(
        "--only", help=f"a comma list of sections to run, of: {', '.join(SECTIONS)} (default: all)"
    )
    args = parser.parse_args(argv)
    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}: choose from {', '.join(SECTIONS)}")
    size = QUICK if args.quick else FULL
    if args.jobs:
        size = dataclasses.replace(size, jobs=args.jobs)
    configured = resolve(load_settings_or_exit())
    with (
        scratch_database(configured.direct_url, prefix="orbit_bench") as url,
        tempfile.TemporaryDirectory() as workdir,
    ):
        migrate(url)
        database = _scratch(configured, url)
        bench = Bench(database, size, args.concurrency, Path(workdir))
        # enqueue() without a connection uses the configured database: the scratch one.
        os.environ.update(DATABASE_URL=bench.env["DATABASE_URL"], DIRECT_URL=url)
        rows: list[Row] = []
        try:
            for row in measure(bench, sections):
                rows.append(row)
                print(f"  {row.figure}: {row.orbit}", file=sys.stderr, flush=True)
        finally:
            bench.engine.dispose()
        _print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
