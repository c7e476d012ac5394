"""The embedded default: with DATABASE_URL unset, processes on one machine share one server."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from app.embedded import _servers, embedded_url
from tests.support.paths import ROOT, TEST_PIPELINES
from tests.support.servers import restart_embedded
from tests.support.waiting import wait_until


def test_processes_without_database_url_share_one_embedded_server(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    """A worker and a separate `orbit enqueue` meet in the server the first one started."""
    env = {k: v for k, v in worker_env.items() if k not in ("DATABASE_URL", "DIRECT_URL")}
    env.update(DATA_DIR=str(tmp_path / "orbit-data"), ORBIT_PIPELINES=TEST_PIPELINES, LOG_FORMAT="json")

    def orbit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    log = (tmp_path / "worker.err").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "app.worker"], env=env, cwd=ROOT, stderr=log, text=True)
    try:
        wait_until(
            lambda: "Worker started" in (tmp_path / "worker.err").read_text(), timeout=120, what="start"
        )
        made = orbit("enqueue", "test.echo", "--params", '{"shared": true}')
        assert made.returncode == 0, made.stderr
        run_id = made.stdout.strip()
        wait_until(
            lambda: '"succeeded"' in orbit("status", run_id, "--json").stdout, what="the run to finish"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        log.close()
    started = (tmp_path / "worker.err").read_text()
    assert '"embedded": true' in started
    assert (tmp_path / "orbit-data" / "pgdata" / "PG_VERSION").exists()


def test_a_restarted_embedded_server_is_still_stopped_at_exit(tmp_path: Path) -> None:
    """After a restart, pgserver tracks the new postmaster: the one it stops when this process
    exits. Tracking the old one, it stopped nothing, and every test session left a server behind."""
    embedded_url(tmp_path)
    restart_embedded(tmp_path)
    pgdata = (tmp_path / "pgdata").resolve()
    running = int((pgdata / "postmaster.pid").read_text().split()[0])
    tracked = _servers[pgdata].get_postmaster_info()
    assert (tracked.pid, tracked.process.is_running()) == (running, True)
