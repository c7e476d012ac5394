"""Scenario 1: no double claim. Eight processes race for the same runs; each runs exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app import enqueue_many
from tests.reliability.conftest import size
from tests.support.paths import ROOT
from tests.support.waiting import wait_until

PROCESSES = 8


def _scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


@pytest.mark.parametrize("batch", [1, 10, 100])
def test_eight_claimers_execute_each_run_exactly_once(
    engine: Engine,
    database_url: str,
    worker_env: dict[str, str],
    figures: Callable[..., None],
    tmp_path: Path,
    batch: int,
) -> None:
    runs = size(2000, 10_000)
    with engine.begin() as conn:
        enqueue_many([("test.noop", {}) for _ in range(runs)], connection=conn)
    claimers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.claimer", database_url, str(batch), str(tmp_path)],
            env=worker_env,
            cwd=ROOT,
        )
        for _ in range(PROCESSES)
    ]
    wait_until(lambda: len(list(tmp_path.glob("*.ready"))) == PROCESSES, timeout=120, what="claimers ready")
    (tmp_path / "go").touch()
    assert [c.wait(timeout=600) for c in claimers] == [0] * PROCESSES
    executed = _scalar(engine, "SELECT count(*) FROM executions")
    twice = _scalar(
        engine, "SELECT count(*) FROM (SELECT run_id FROM executions GROUP BY run_id HAVING count(*) > 1) d"
    )
    left = _scalar(engine, "SELECT count(*) FROM runs WHERE status <> 'succeeded'")
    claimers_used = _scalar(engine, "SELECT count(DISTINCT pid) FROM executions")
    figures(runs=runs, batch=batch, processes=PROCESSES, executed=executed, executed_twice=twice, left=left)
    assert (executed, twice, left) == (runs, 0, 0)
    assert claimers_used > 1, "the race never happened: one claimer took everything"
