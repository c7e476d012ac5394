"""Pipelines used by the tests. Each execution is written to the side table ``executions``
(run_id, attempt, pid, note) over its own connection, so tests can prove what ran and how often.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, Field

from app import Context, FailNow, Snooze, pipeline

SIDE_TABLE = """
    CREATE TABLE IF NOT EXISTS executions (
        run_id bigint, attempt int, pid int, note text, at timestamptz DEFAULT clock_timestamp()
    )
"""


def record(ctx: Context, note: str = "") -> None:
    with psycopg.connect(os.environ["ORBIT_TEST_SIDE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO executions (run_id, attempt, pid, note) VALUES (%s, %s, %s, %s)",
            (ctx.run_id, ctx.attempt, os.getpid(), note),
        )


def wait_for_file(path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@pipeline("test.noop")
def noop(ctx: Context, params: dict[str, Any]) -> None:
    return None


@pipeline("test.record")
def record_run(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    record(ctx)
    return {"run_id": ctx.run_id}


@pipeline("test.echo")
def echo(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    return params


@pipeline("test.sleep", max_attempts=1)
def sleep(ctx: Context, params: dict[str, Any]) -> None:
    record(ctx, "start")
    time.sleep(float(params.get("seconds", 3600)))
    record(ctx, "after-sleep")


@pipeline("test.busy_c", max_attempts=1)
def busy_c(ctx: Context, params: dict[str, Any]) -> None:
    record(ctx, "start")
    # Catastrophic backtracking: a loop inside the C regex engine that never releases the GIL.
    re.match(r"(a+)+$", "a" * 64 + "b")
    record(ctx, "after-loop")


@pipeline("test.grandchild", max_attempts=1)
def grandchild(ctx: Context, params: dict[str, Any]) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(params["pidfile"]).write_text(str(child.pid))
    time.sleep(3600)


@pipeline("test.fail", max_attempts=3)
def fail(ctx: Context, params: dict[str, Any]) -> None:
    record(ctx)
    raise ValueError(f"boom on attempt {ctx.attempt}")


@pipeline("test.flaky", max_attempts=3)
def flaky(ctx: Context, params: dict[str, Any]) -> dict[str, int]:
    record(ctx)
    if ctx.attempt < int(params.get("succeed_on", 2)):
        raise RuntimeError("not yet")
    return {"attempt": ctx.attempt}


@pipeline("test.fail_now", max_attempts=5)
def fail_now(ctx: Context, params: dict[str, Any]) -> None:
    raise FailNow("bad input, do not retry")


@pipeline("test.snooze", max_attempts=1)
def snooze(ctx: Context, params: dict[str, Any]) -> str:
    record(ctx)
    if not params.get("done"):
        raise Snooze(params.get("delay", 30))
    return "done"


@pipeline("test.crash", max_attempts=1)
def crash(ctx: Context, params: dict[str, Any]) -> None:
    if params.get("how") == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(3)


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pipeline("test.kill_worker", max_attempts=2)
def kill_worker(ctx: Context, params: dict[str, Any]) -> None:
    """SIGKILLs its worker (the parent of the fork server, its executor's parent)."""
    record(ctx)
    os.kill(_parent_of(os.getppid()), signal.SIGKILL)
    time.sleep(60)


@pipeline("test.kill_fork_server", max_attempts=1)
def kill_fork_server(ctx: Context, params: dict[str, Any]) -> None:
    """SIGKILLs the fork server its executor was forked from (and so its executor)."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)


@pipeline("test.steps", max_attempts=3)
def steps(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    def one() -> int:
        record(ctx, "one")
        return 1

    def two(x: int) -> int:
        record(ctx, "two")
        if params.get("block_file"):
            wait_for_file(params["block_file"])
        return x + 1

    def three(y: int) -> int:
        record(ctx, "three")
        return y * 10

    a = ctx.step("one", one)
    b = ctx.step("two", two, a)
    return {"result": ctx.step("three", three, b)}


@pipeline("test.same_step_twice")
def same_step_twice(ctx: Context, params: dict[str, Any]) -> None:
    ctx.step("a", lambda: 1)
    ctx.step("a", lambda: 2)


@pipeline("test.bad_result", max_attempts=1)
def bad_result(ctx: Context, params: dict[str, Any]) -> object:
    return {"when": object()}


@pipeline("test.cooperative", max_attempts=1)
def cooperative(ctx: Context, params: dict[str, Any]) -> str:
    record(ctx, "start")
    deadline = time.monotonic() + float(params.get("seconds", 60))
    while time.monotonic() < deadline:
        if ctx.should_stop:
            return "stopped early"
        time.sleep(0.01)
    return "finished"


@pipeline("test.tick", max_attempts=3)
def tick(ctx: Context, params: dict[str, Any]) -> int:
    """Works without the database: sleeps, then appends ``run_id attempt pid`` to a file."""
    time.sleep(float(params.get("seconds", 0.1)))
    with open(params["log"], "a") as log:
        log.write(f"{ctx.run_id} {ctx.attempt} {os.getpid()}\n")
    return ctx.run_id


@pipeline("test.owner", max_attempts=3)
def owner(ctx: Context, params: dict[str, Any]) -> dict[str, int]:
    """Slow on its first attempt only; logs ``start|end run attempt pid`` lines to a file."""

    def note(what: str) -> None:
        with open(params["log"], "a") as log:
            log.write(f"{what} {ctx.run_id} {ctx.attempt} {os.getpid()}\n")

    note("start")
    time.sleep(float(params["first_seconds"]) if ctx.attempt == 1 else 0.05)
    note("end")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@pipeline("test.work", max_attempts=10)
def work(ctx: Context, params: dict[str, Any]) -> int:
    """Sleeps ``seconds``; logs ``start|end run attempt pid`` lines to a file, not the database."""
    for what in ("start", "end"):
        with open(params["log"], "a") as log:
            log.write(f"{what} {ctx.run_id} {ctx.attempt} {os.getpid()}\n")
        if what == "start":
            time.sleep(float(params["seconds"]))
    return ctx.attempt


@pipeline("test.blocking_socket", max_attempts=1)
def blocking_socket(ctx: Context, params: dict[str, Any]) -> None:
    import socket

    record(ctx, "start")
    left, _right = socket.socketpair()
    left.recv(1)  # nothing will ever arrive
    record(ctx, "after-recv")


@pipeline("test.log", max_attempts=1)
def log_lines(ctx: Context, params: dict[str, Any]) -> None:
    ctx.log.info("Pipeline says hello", note=params.get("note", ""))
    if params.get("fail"):
        raise RuntimeError(f"cannot reach {params['fail']}")


@pipeline("test.step_fails", max_attempts=1)
def step_fails(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Step "two" fails on the first attempt and succeeds on later ones."""

    def one() -> str:
        record(ctx, "one")
        return "a"

    def two(value: str) -> str:
        record(ctx, "two")
        if ctx.attempt == 1:
            raise ConnectionError("upstream unavailable")
        return value + "b"

    return {"value": ctx.step("two", two, ctx.step("one", one))}


@pipeline("test.heartbeat", max_attempts=1)
def heartbeat(ctx: Context, params: dict[str, Any]) -> None:
    time.sleep(0.3)
    ctx.heartbeat()


# Daily, so a slot almost never falls due by itself during a test; tests move
# schedules.last_slot back to make slots due.
@pipeline("test.daily", schedule="0 6 * * *")
def daily(ctx: Context, params: dict[str, Any]) -> None:
    return None


@pipeline("test.daily_backfill", schedule="30 6 * * *", schedule_tz="Europe/Paris", backfill=True)
def daily_backfill(ctx: Context, params: dict[str, Any]) -> None:
    return None


# The pipelines docs/operations.md names, so its commands run verbatim in the tests.
@pipeline("invoices.send")
def send_invoice(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    return params


@pipeline("reports.daily", schedule="0 6 * * *", schedule_tz="Europe/Paris")
def daily_report(ctx: Context, params: dict[str, Any]) -> None:
    return None


@pipeline("test.nap")
def nap(ctx: Context, params: dict[str, Any]) -> None:
    """Sleeps ``seconds``; touches ``path`` first when given (proof that the run started)."""
    if params.get("path"):
        Path(params["path"]).touch()
    time.sleep(float(params.get("seconds", 0)))


@pipeline("test.unstorable_error", max_attempts=1)
def unstorable_error(ctx: Context, params: dict[str, Any]) -> None:
    """Fails with text PostgreSQL cannot store: a NUL byte, or an undecodable file name."""
    if params.get("how") == "surrogate":
        name = os.fsdecode(b"report-\xff.csv")
        raise FileNotFoundError(f"cannot open {name}")
    raise ValueError("a\x00b")


@pipeline("test.unstorable_result", max_attempts=1)
def unstorable_result(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Returns text PostgreSQL cannot store, a NUL byte and a lone surrogate, key and value."""
    return {"a\x00b": os.fsdecode(b"report-\xff.csv")}


@pipeline("test.step_value", max_attempts=2)
def step_value(ctx: Context, params: dict[str, Any]) -> Any:
    """Records what its step returned as seen by each attempt; the first attempt then fails."""
    value = ctx.step("make", lambda: {1: "one", "pair": (1, 2)})
    record(ctx, repr(value))
    if ctx.attempt == 1:
        raise ConnectionError("try again")
    return value


@pipeline("test.cyclic_result", max_attempts=3)
def cyclic_result(ctx: Context, params: dict[str, Any]) -> Any:
    """Returns a list that contains itself, or one nested deeper than any encoder goes."""
    if params.get("how") == "deep":
        deep: list[Any] = []
        for _ in range(100_000):
            deep = [deep]
        return deep
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    return cyclic


@pipeline("test.unstorable_step", max_attempts=1)
def unstorable_step(ctx: Context, params: dict[str, Any]) -> Any:
    """A step that fails with a NUL byte in its message, or returns one."""
    if params.get("how") == "output":
        return ctx.step("make", lambda: "a\x00b")

    def fail() -> None:
        raise ValueError("a\x00b")

    return ctx.step("make", fail)


@pipeline("test.break_module", max_attempts=1)
def break_module(ctx: Context, params: dict[str, Any]) -> None:
    """Breaks the pipeline module at ``path`` (deployed over a running worker), then crashes its
    executor, so that the worker starts another, which cannot import it."""
    Path(params["path"]).write_text('raise ImportError("this module is broken")\n')
    os._exit(3)


@pipeline("test.fork_helper", max_attempts=1)
def fork_helper(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Forks a helper that ends as ``how`` says (``exit``: sys.exit(3), ``raise``, ``return``) and
    waits for it; returns the helper's exit status."""
    helper = os.fork()
    if helper == 0:
        how = params.get("how", "exit")
        if how == "exit":
            sys.exit(3)
        if how == "raise":
            raise RuntimeError("the helper failed")
        return {"from": "the helper"}
    _, status = os.waitpid(helper, 0)
    return {"from": "the run", "helper_status": os.waitstatus_to_exitcode(status)}


@pipeline("test.forge_outcomes", max_attempts=1)
def forge_outcomes(ctx: Context, params: dict[str, Any]) -> str:
    """Sends on its executor's socket the outcomes of another run and of another attempt of this
    one, as a second process speaking on the socket would; only its own return may count."""
    import gc
    import socket

    from app.executor import wire

    (sock,) = [o for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() >= 0]
    now = time.monotonic()
    wire.send(sock, ("done", ctx.run_id + 1, ctx.attempt, '"forged"', None, now, now))
    wire.send(sock, ("done", ctx.run_id, ctx.attempt + 1, '"forged"', None, now, now))
    return "its own"


@pipeline("test.sleepers", max_attempts=1)
def sleepers(ctx: Context, params: dict[str, Any]) -> None:
    """Starts ``count`` ``sleep`` processes and appends their pids to ``pidfile``; then sleeps,
    or returns at once with ``linger`` (its processes outlive the run)."""
    pids = [subprocess.Popen(["sleep", "4243"]).pid for _ in range(int(params.get("count", 1)))]
    with open(params["pidfile"], "a") as pidfile:
        pidfile.write("".join(f"{pid}\n" for pid in pids))
    if not params.get("linger"):
        time.sleep(3600)


@pipeline("test.terminate_child", max_attempts=1)
def terminate_child(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Starts ``sleep``, stops it with SIGTERM, and returns its exit status and the signals it ignored."""
    child = subprocess.Popen(["sleep", "3600"])
    try:
        with open(f"/proc/{child.pid}/status") as status:
            ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
        child.terminate()
        return {
            "status": child.wait(timeout=10),
            "ignored": [sig.name for sig in (signal.SIGINT, signal.SIGTERM) if ignored >> (sig - 1) & 1],
        }
    finally:
        child.kill()


class TypedParams(BaseModel):
    """The params of test.typed: a model the API, the CLI and enqueue() validate against."""

    customer: str = Field(min_length=1)
    days: int = Field(default=7, ge=1)
    format: Literal["csv", "pdf"] = "csv"


@pipeline("test.typed", max_attempts=1, params=TypedParams)
def typed(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    return params


@pipeline("test.capped", concurrency=2, group_concurrency=1)
def capped(ctx: Context, params: dict[str, Any]) -> dict[str, float]:
    """Runs a while and says when, on its own clock: flow-control tests check the overlaps."""
    start = time.time()
    time.sleep(float(params.get("seconds", 0.2)))
    return {"start": start, "end": time.time()}


@pipeline("test.rated", rate="4/s")
def rated(ctx: Context, params: dict[str, Any]) -> None:
    return None


# The pipelines docs/operations.md's "Flow control" limits (tests/acceptance/test_operations_doc.py).
@pipeline("crm.sync", rate="100/m")
def crm_sync(ctx: Context, params: dict[str, Any]) -> None:
    return None


@pipeline("warehouse.load", concurrency=4)
def warehouse_load(ctx: Context, params: dict[str, Any]) -> None:
    return None


def _grow(mb: int, hold: float) -> int:
    """Allocate ``mb`` MB in steps of 8 MB, each page written (resident, not only reserved), then
    hold it ``hold`` seconds; returns this process's pid."""
    chunks = []
    for _ in range(0, mb, 8):
        chunks.append(bytearray(8 * 2**20))
        time.sleep(0.002)  # as real code grows: the watchdog reads the size between steps
    time.sleep(hold)
    del chunks
    return os.getpid()


@pipeline("test.hog", max_attempts=2, max_memory="160MB")
def hog(ctx: Context, params: dict[str, Any]) -> int:
    """Grows to ``mb`` MB (default 600) under its own limit of 160 MB."""
    return _grow(int(params.get("mb", 600)), float(params.get("hold", 0)))


@pipeline("test.grow", max_attempts=1)
def grow(ctx: Context, params: dict[str, Any]) -> int:
    """Grows to ``mb`` MB under the worker's EXECUTOR_MAX_MEMORY, if any; returns its pid."""
    return _grow(int(params.get("mb", 100)), float(params.get("hold", 0)))


@pipeline("test.pid")
def pid(ctx: Context, params: dict[str, Any]) -> int:
    """The pid of the executor that ran it."""
    return os.getpid()
