"""The HTTP API: ``POST /queue/enqueue`` on a real ``orbit serve`` process, beside ``enqueue()``.

As seed 001 measured it (``ab -n 1000 -c 10``): single-run requests from ``CLIENTS`` keep-alive
clients, each a thread with its own connection; ``enqueue()`` from as many threads, each with its
own database connection; and one request carrying a batch of runs. The clients are
``http.client``: it parses a response in C and a few Python calls, where httpx adds its own
request and response models, transports and header handling (several times the client CPU per
request), and the clients share these two cores with the server and PostgreSQL, so a heavier
client would be measured instead of the API.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine

from app import access, enqueue
from tests.support.http import announced_port

CLIENTS = 10
PATH = "/queue/enqueue"
ONE_RUN = json.dumps({"pipeline": "bench.noop", "params": {}}).encode()
TOKEN_NAME = "orbit-bench"

Finish = Callable[[list["subprocess.Popen[bytes]"]], None]


@dataclass
class Api:
    """A listening ``orbit serve``: its port, the headers of an operator token's request, and
    once stopped, its exit status."""

    port: int
    headers: dict[str, str]
    exit_code: int | None = None

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def post(self, conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
        conn.request("POST", PATH, body=body, headers=self.headers)
        response = conn.getresponse()
        return response.status, response.read()


@dataclass(frozen=True)
class Singles:
    """``requests`` single-run requests: the rate over all, each one's latency, and the answers
    that were not 201 (by status; 0 for a connection error)."""

    rate: float
    latencies_ms: list[float]
    failures: Counter[int]


@contextlib.contextmanager
def serving(env: dict[str, str], engine: Engine, finish: Finish, timeout: float = 60) -> Iterator[Api]:
    """``orbit serve`` on a free port (``--port 0``: the port it prints once it listens), with an
    operator token; stopped with SIGTERM, its exit status kept in the Api (it should be 0).

    Killed by the SIGTERM itself (-15: it stopped, then re-raised the signal), the status is
    left for the table to show; any other failure goes to ``finish``, which ends the bench with
    its last errors."""
    with engine.begin() as conn:
        secret = access.create(conn, TOKEN_NAME, "operator", "bench")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    api = Api(0, {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
    try:
        assert proc.stdout is not None
        try:
            api.port = announced_port(proc.stdout, timeout)
        except RuntimeError as exc:
            raise SystemExit(f"bench: {exc}") from None
        yield api
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            api.exit_code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"bench: orbit serve did not stop within {timeout:g}s of SIGTERM") from None
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
            with engine.begin() as conn:
                access.revoke(conn, TOKEN_NAME)
        if api.exit_code not in (0, -signal.SIGTERM):
            finish([proc])


def singles(api: Api, requests: int, clients: int = CLIENTS) -> Singles:
    """``requests`` single-run POSTs from ``clients`` keep-alive connections, each in a thread that
    takes the next request as it is free (as ``ab -c`` does). Each connection is opened and used
    once before the clock starts."""
    todo = iter(range(requests))
    latencies: list[float] = []
    failures: Counter[int] = Counter()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        conn, mine, failed = api.connect(), [], Counter[int]()
        try:
            _warm(api, conn)
            start.wait()
            for _ in todo:
                began = time.perf_counter()
                try:
                    status, _ = api.post(conn, ONE_RUN)
                except (OSError, http.client.HTTPException):
                    status = 0
                    conn.close()
                mine.append((time.perf_counter() - began) * 1000)
                if status != 201:
                    failed[status] += 1
        finally:
            conn.close()
            latencies.extend(mine)
            failures.update(failed)

    return Singles(requests / _timed(client, clients, start), latencies, failures)


def _warm(api: Api, conn: http.client.HTTPConnection) -> None:
    """One request (one run) before the clock starts: opens the connection, checks the answer."""
    status, answer = api.post(conn, ONE_RUN)
    if status != 201:
        raise SystemExit(f"bench: POST {PATH} got {status}: {answer[:200]!r}")


def batch(api: Api, runs: int, repeats: int) -> float:
    """Runs per second of one POST of ``runs`` runs (the JSON built beforehand), median of
    ``repeats`` requests on one connection."""
    body = json.dumps([{"pipeline": "bench.noop", "params": {}}] * runs).encode()
    conn, rates = api.connect(), []
    try:
        _warm(api, conn)
        for _ in range(repeats):
            began = time.perf_counter()
            status, answer = api.post(conn, body)
            elapsed = time.perf_counter() - began
            if status != 201 or len(json.loads(answer)["ids"]) != runs:
                raise SystemExit(f"bench: a batch of {runs} runs got {status}: {answer[:200]!r}")
            rates.append(runs / elapsed)
    finally:
        conn.close()
    return statistics.median(rates)


def python_enqueue(engine: Engine, runs: int, threads: int = CLIENTS) -> float:
    """Runs per second of ``enqueue()`` from ``threads`` threads, each on its own connection in
    autocommit (one statement per run, as ``enqueue()`` sends on its kept connection); the engine
    must hold ``threads`` connections. Each connection is opened and used once before the clock."""
    todo = iter(range(runs))
    start = threading.Barrier(threads + 1)

    def worker() -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            enqueue("bench.noop", {}, connection=conn)
            start.wait()
            for _ in todo:
                enqueue("bench.noop", {}, connection=conn)

    return runs / _timed(worker, threads, start)


def _timed(target: Callable[[], None], threads: int, start: threading.Barrier) -> float:
    """Run ``target`` in ``threads`` threads, which meet this one at ``start`` when ready; the
    seconds from there to the last one's end. A thread's error ends the bench."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)
            start.abort()

    started = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in started:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait(timeout=60)
    began = time.perf_counter()
    for thread in started:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise SystemExit(f"bench: a client thread failed: {errors[0]!r:.300}")
    return elapsed
