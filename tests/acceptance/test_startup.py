"""A worker that cannot start says why in one line on stderr and exits 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable

from tests.support.workers import stderr_of


def test_a_bad_setting_stops_the_worker_with_status_2_before_the_database() -> None:
    """The worker exits 2 with one line on stderr, without touching any database."""
    env = {"POLL_INTERVAL": "abc", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "app.worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "POLL_INTERVAL='abc'" in proc.stderr


def test_a_bad_stale_after_stops_the_worker_with_status_2() -> None:
    """At start-up, before any database: one line, exit 2."""
    env = {"HEARTBEAT_INTERVAL": "5s", "STALE_AFTER": "4s", "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    proc = subprocess.run(
        [sys.executable, "-m", "app.worker"],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "STALE_AFTER=4s" in proc.stderr


def test_a_worker_whose_port_is_taken_exits_2(spawn_worker: Callable[..., subprocess.Popen[str]]) -> None:
    """The worker refuses to start, with one line on stderr, when its metrics port is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn_worker(env={"METRICS_PORT": str(port)})
        assert proc.wait(timeout=60) == 2
        assert f"orbit: cannot serve metrics on 127.0.0.1:{port}" in stderr_of(proc)
