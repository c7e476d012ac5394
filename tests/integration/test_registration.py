"""A worker id belongs to one live process: a second one is refused, a dead one's id is taken back."""

from __future__ import annotations

import socket
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app import registration
from app.registration import Registration, WorkerIdInUse
from tests.support.runs import worker_row

STALE_AFTER = timedelta(seconds=15)


def _me(worker_id: str, *, hostname: str | None = None, pid: int = 4242) -> Registration:
    return Registration(worker_id, hostname or socket.gethostname(), pid, 1, "*", ["test.noop"], "t")


def _holder(engine: Engine, worker_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT hostname, pid, stopped_at FROM workers WHERE id = :id"), {"id": worker_id}
        ).first()


def _register(engine: Engine, me: Registration) -> None:
    with engine.begin() as conn:
        registration.register(conn, me, STALE_AFTER)


@pytest.mark.parametrize(
    ("heartbeat_ago", "stopped"), [(0.0, True), (60.0, False)], ids=["stopped", "silent"]
)
def test_a_stopped_or_silent_holder_gives_the_id_up(
    engine: Engine, heartbeat_ago: float, stopped: bool
) -> None:
    """An id whose holder stopped, or is silent past STALE_AFTER, is registered anew."""
    worker_row(engine, "w", heartbeat_ago=heartbeat_ago, stopped=stopped)
    _register(engine, _me("w"))
    holder = _holder(engine, "w")
    assert (holder.pid, holder.stopped_at) == (4242, None)


def test_a_live_holder_on_another_host_keeps_the_id(engine: Engine) -> None:
    """A fresh heartbeat of another host's process: refused, its row untouched."""
    worker_row(engine, "w", heartbeat_ago=1.0)
    with pytest.raises(
        WorkerIdInUse, match=r"worker id 'w' is in use by a live worker \(host test-host, pid 1"
    ):
        _register(engine, _me("w"))
    assert _holder(engine, "w").hostname == "test-host"


def test_a_holder_of_this_host_that_no_longer_runs_gives_the_id_up(engine: Engine) -> None:
    """Fresh heartbeat, but its process on this host is gone: the id is taken back at once."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    _register(engine, _me("w", pid=gone.pid))
    _register(engine, _me("w", pid=4242))
    assert _holder(engine, "w").pid == 4242
