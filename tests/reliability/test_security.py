"""Scenario 9: separate roles, and no secret in any log."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from app import enqueue, queries
from app.states import RunStatus
from tests.conftest import ROOT, fetch_run
from tests.support.http import free_port, get
from tests.support.waiting import wait_until

ROLES = (ROOT / "deploy" / "roles.sql").read_text()
CANARY_PASSWORD = "canary-pw-7f3a9"
CANARY_PARAM = "canary-param-51c2e"


def _with_canary_password(url: str) -> str:
    return make_url(url).set(password=CANARY_PASSWORD).render_as_string(hide_password=False)


def _canary_env(worker_env: dict[str, str]) -> dict[str, str]:
    """DATABASE_URL (and DIRECT_URL, when the tests use a pooler) with the canary password."""
    return {
        k: _with_canary_password(worker_env[k]) for k in ("DATABASE_URL", "DIRECT_URL") if k in worker_env
    }


def _unreachable(env: dict[str, str]) -> dict[str, str]:
    """The same URLs on port 1, where nothing listens (a TCP port or a Unix socket's name)."""
    return {k: make_url(v).set(port=1).render_as_string(hide_password=False) for k, v in env.items()}


@pytest.fixture
def roles(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.exec_driver_sql(ROLES)
    return engine


def test_roles_can_be_applied_twice(roles: Engine) -> None:
    with roles.begin() as conn:
        conn.exec_driver_sql(ROLES)


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE intruder (id int)",
        "DROP TABLE runs",
        "ALTER TABLE runs ADD COLUMN x int",
        "TRUNCATE runs",
    ],
)
@pytest.mark.parametrize("role", ["orbit_worker", "orbit_enqueuer"])
def test_workers_and_enqueuers_cannot_change_the_schema(roles: Engine, role: str, ddl: str) -> None:
    with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"), roles.begin() as conn:
        conn.execute(text(f"SET LOCAL ROLE {role}"))
        conn.execute(text(ddl))


def test_the_worker_role_can_do_a_workers_job(roles: Engine) -> None:
    with roles.begin() as conn:
        conn.execute(text("SET LOCAL ROLE orbit_enqueuer"))
        run_id = enqueue("test.noop", {}, connection=conn)
    with roles.begin() as conn:
        conn.execute(text("SET LOCAL ROLE orbit_worker"))
        queries.register_worker(
            conn, id="w", hostname="h", pid=1, concurrency=1, pipeline_filter="*", pipelines=[], version="t"
        )
        (run,) = queries.claim(conn, worker_id="w", limit=1, defaults={"test.noop": (3, 60.0)}, version="t")
        assert queries.heartbeat(conn, "w", {run.id: run.attempt}) == {run.id}
        assert queries.succeed_many(conn, "w", [queries.Success(run.id, run.attempt, "null")]) == {run.id}
    assert fetch_run(roles, run_id).status == RunStatus.SUCCEEDED


def test_the_enqueuer_role_cannot_claim_runs(roles: Engine) -> None:
    with pytest.raises(ProgrammingError, match="permission denied"), roles.begin() as conn:
        conn.execute(text("SET LOCAL ROLE orbit_enqueuer"))
        enqueue("test.noop", {}, connection=conn)
        queries.claim(conn, worker_id="w", limit=1, defaults={"test.noop": (3, 60.0)}, version="t")


def test_no_password_or_params_in_any_log(
    engine: Engine,
    worker_env: dict[str, str],
    spawn_worker: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """A canary password in DATABASE_URL and a canary value in params never reach a log line."""
    urls = _canary_env(worker_env)
    with engine.begin() as conn:
        ok = enqueue("test.echo", {"token": CANARY_PARAM}, connection=conn)
        bad = enqueue("test.fail", {"token": CANARY_PARAM}, max_attempts=1, connection=conn)
    env = {**urls, "LOG_LEVEL": "debug", "LOGS_DIR": str(tmp_path / "logs")}
    assert spawn_worker("--burst", env=env).wait(timeout=60) == 0
    assert (fetch_run(engine, ok).status, fetch_run(engine, bad).status) == ("succeeded", "failed")
    unreachable = {**env, **_unreachable(urls)}
    spawn_worker(env=unreachable).wait(timeout=60)
    written = [path.read_text() for path in (tmp_path / "logs").iterdir()]
    written += [path.read_text() for path in tmp_path.glob("worker-*.stderr")]
    assert written and any("Run succeeded" in text for text in written)
    for content in written:
        assert CANARY_PASSWORD not in content
        assert CANARY_PARAM not in content


def test_no_password_or_params_in_metrics_and_the_endpoint_is_local(
    engine: Engine, worker_env: dict[str, str], spawn_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    urls = _canary_env(worker_env)
    with engine.begin() as conn:
        ok = enqueue("test.echo", {"token": CANARY_PARAM}, connection=conn)
        enqueue("test.fail", {"token": CANARY_PARAM}, max_attempts=1, connection=conn)
    port = free_port()
    worker = spawn_worker(env={**urls, "METRICS_PORT": str(port)})
    wait_until(lambda: fetch_run(engine, ok).status == RunStatus.SUCCEEDED, what="the run to finish")
    pages = [get(port, path).body for path in ("/metrics", "/health")]
    assert "orbit_runs_claimed_total" in pages[0]
    for page in pages:
        assert CANARY_PASSWORD not in page and CANARY_PARAM not in page
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    ]
    assert f"0100007F:{port:04X}" in listening, "the endpoint should listen on 127.0.0.1 only"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
