"""`orbit runs` and `orbit workers`: readable tables in a terminal, JSON with --json."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from tests.support.runs import finished_run, pending_run, running_run, worker_row
from tests.support.waiting import wait_until


def test_orbit_runs_filters_by_status_and_pipeline(engine: Engine, orbit: Callable[..., Any]) -> None:
    """--status and --pipeline select runs, newest first; --limit caps them; the table has a header."""
    failed = finished_run(engine, "p.a", "failed", error="ValueError: no")
    older = pending_run(engine, "p.a")
    newer = pending_run(engine, "p.a")
    pending_run(engine, "q.b")
    listed = json.loads(orbit("runs", "--status", "pending", "--pipeline", "p.*", "--json").stdout)
    assert [r["id"] for r in listed] == [newer, older]
    assert len(json.loads(orbit("runs", "--limit", "2", "--json").stdout)) == 2
    table = orbit("runs", "--status", "failed")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["ID", "PIPELINE", "STATUS"]
    assert row.split()[:3] == [str(failed), "p.a", "failed"]
    assert "ValueError: no" in row
    bad = orbit("runs", "--limit", "0")
    assert (bad.returncode, bad.stderr.strip()) == (2, "orbit: --limit must be at least 1")


def test_orbit_workers_lists_heartbeats_and_running_runs(engine: Engine, orbit: Callable[..., Any]) -> None:
    """Each worker with its state, heartbeat age and how many runs it holds."""
    worker_row(engine, "w-live")
    worker_row(engine, "w-gone", heartbeat_ago=60, stopped=True)
    running_run(engine, "p.a", "w-live")
    records = {r["id"]: r for r in json.loads(orbit("workers", "--json").stdout)}
    assert (records["w-live"]["running"], records["w-gone"]["running"]) == (1, 0)
    assert records["w-gone"]["heartbeat_age_s"] >= 60
    lines = orbit("workers").stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "STATE"]
    states = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert states == {"w-live": "running", "w-gone": "stopped"}


def test_orbit_workers_shows_what_each_workers_processes_use(
    engine: Engine, orbit: Callable[..., Any], spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """The worker, its fork server and each executor, written with its heartbeat: their sizes in
    --json, all of them together and the executors' in the table."""
    worker = spawn_worker("--concurrency", "2")
    try:
        (record,) = wait_until(
            lambda: [r for r in json.loads(orbit("workers", "--json").stdout) if r["memory"]],
            what="a heartbeat with the memory",
        )
        memory = record["memory"]
        assert {"worker", "forkserver", "executor-0", "executor-1"} <= set(memory)
        processes = [value for name, value in memory.items() if name != "total_pss"]
        assert all(value["rss"] >= value["pss"] > 0 for value in processes)
        assert memory["total_pss"] == sum(value["pss"] for value in processes)
        (line,) = orbit("workers").stdout.splitlines()[1:]
        assert re.search(r"\d+ MB \(executors \d", line), line
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
