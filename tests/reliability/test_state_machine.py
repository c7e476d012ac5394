"""Scenario 2: the run state machine against a real database, driven in any order by hypothesis.

Several workers claim, heartbeat, complete and fail runs while time passes (heartbeats expire), the
rescuer and operators intervene, workers give runs back (snooze, shutdown: the attempt is not
counted), and workers keep writing with leases they have lost. Claims and outcomes go through
``queries.exchange``, the turn the worker runs. After every step: no attempt was
handed out twice (unless given back), finished runs never change, attempts never go down (except
by one, given back by the live lease), and a write succeeds exactly when it comes from the run's
live lease.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Connection, Engine, text

from app import enqueue, queries
from app.states import FINISHED, RunStatus
from tests.reliability.conftest import size

WORKERS = st.sampled_from(["a", "b", "c"])
DEFAULTS = {"test.noop": (3, 60.0)}
STALE = timedelta(seconds=60)
Lease = tuple[int, int, str]  # run id, attempt, worker


def _live(conn: Connection, lease: Lease) -> bool:
    run_id, attempt, worker = lease
    row = conn.execute(
        text("SELECT status, attempt, worker_id FROM runs WHERE id = :id FOR UPDATE"), {"id": run_id}
    ).one()
    return (row.status, row.attempt, row.worker_id) == ("running", attempt, worker)


def _write(conn: Connection, lease: Lease, t: queries.Transition) -> bool:
    """Write ``t`` as the lease's worker would, in a turn; whether it was written."""
    written, _ = queries.exchange(conn, worker_id=lease[2], transitions=[t])
    return written == {t.id}


def test_the_run_state_machine_holds_its_invariants(engine: Engine) -> None:
    class RunMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            with engine.begin() as conn:
                conn.execute(text("TRUNCATE runs, run_steps, workers RESTART IDENTITY CASCADE"))
            self.leases: list[Lease] = []
            self.handed: set[tuple[int, int]] = set()  # (run id, attempt) handed out and counted
            self.finished: dict[int, tuple[Any, ...]] = {}
            self.attempts: dict[int, int] = {}

        @rule()
        def enqueue_run(self) -> None:
            with engine.begin() as conn:
                enqueue("test.noop", {}, max_attempts=3, connection=conn)

        @rule(worker=WORKERS, limit=st.integers(1, 3))
        def claim(self, worker: str, limit: int) -> None:
            with engine.begin() as conn:
                _, claimed = queries.exchange(conn, worker_id=worker, limit=limit, defaults=DEFAULTS)
            for run in claimed:
                lease = (run.id, run.attempt, worker)
                assert lease[:2] not in self.handed, f"attempt handed out twice: {lease}"
                self.handed.add(lease[:2])
                self.leases.append(lease)

        @precondition(lambda self: self.leases)
        @rule(data=st.data())
        def complete(self, data: st.DataObject) -> None:
            lease = data.draw(st.sampled_from(self.leases))
            with engine.begin() as conn:
                live = _live(conn, lease)
                success = queries.Success(lease[0], lease[1], '"ok"')
                done, _ = queries.exchange(conn, worker_id=lease[2], successes=[success])
            assert done == ({lease[0]} if live else set())

        @precondition(lambda self: self.leases)
        @rule(data=st.data(), final=st.booleans())
        def fail(self, data: st.DataObject, final: bool) -> None:
            lease = data.draw(st.sampled_from(self.leases))
            status = RunStatus.FAILED if final else RunStatus.PENDING
            t = queries.Transition(lease[0], lease[1], status, error="boom", entry={"kind": "error"})
            with engine.begin() as conn:
                live = _live(conn, lease)
                assert _write(conn, lease, t) == live

        @precondition(lambda self: self.leases)
        @rule(data=st.data(), delay=st.sampled_from([0.0, 3600.0]))
        def give_back(self, data: st.DataObject, delay: float) -> None:
            """Snooze (with a delay) or shutdown (at once): pending again, the attempt refunded."""
            lease = data.draw(st.sampled_from(self.leases))
            t = queries.Transition(lease[0], lease[1], RunStatus.PENDING, delay=delay, refund=True)
            with engine.begin() as conn:
                live = _live(conn, lease)
                assert _write(conn, lease, t) == live
            if live:
                self.handed.discard(lease[:2])
                self.attempts[lease[0]] = lease[1] - 1

        @rule(worker=WORKERS)
        def heartbeat(self, worker: str) -> None:
            mine = {run_id: attempt for run_id, attempt, w in self.leases if w == worker}
            with engine.begin() as conn:
                live = {run_id for run_id, attempt in mine.items() if _live(conn, (run_id, attempt, worker))}
                assert queries.heartbeat(conn, worker, mine) == live

        @rule()
        def time_passes(self) -> None:
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE status = 'running'")
                )

        @rule()
        def rescue(self) -> None:
            with engine.begin() as conn:
                queries.recover(conn, STALE)

        @rule(run_id=st.integers(1, 8))
        def cancel(self, run_id: int) -> None:
            with engine.begin() as conn:
                queries.cancel(conn, run_id)

        @invariant()
        def history_only_moves_forward(self) -> None:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT id, status, attempt, result, worker_id, finished_at FROM runs")
                )
                for row in rows:
                    assert row.attempt >= self.attempts.get(row.id, 0), f"attempt went down on run {row.id}"
                    self.attempts[row.id] = row.attempt
                    snapshot = (row.status, row.attempt, row.result, row.finished_at)
                    if row.id in self.finished:
                        assert snapshot == self.finished[row.id], f"finished run {row.id} changed"
                    elif row.status in FINISHED:
                        self.finished[row.id] = snapshot
                    if row.status == RunStatus.RUNNING:
                        assert row.worker_id is not None

    run_state_machine_as_test(
        RunMachine,
        settings=settings(
            max_examples=size(25, 300),
            stateful_step_count=size(25, 60),
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
