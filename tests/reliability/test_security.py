"""Scenario 9: separate roles, each refused what its code never does, and no secret in any log."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from app import enqueue, enqueue_many, queries
from app.database import libpq_url, make_engine, migrate
from app.states import RunStatus
from tests.support.http import answers, free_port, get, samples
from tests.support.paths import ROOT
from tests.support.pipelines import SIDE_TABLE
from tests.support.runs import fetch_run
from tests.support.servers import TestServer
from tests.support.waiting import wait_until
from tests.support.workers import stderr_of

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


# --- roles ---------------------------------------------------------------------------------------
# The whole workflow of deploy/roles.sql in a database of its own, with a login role in each group
# as a deployment would have: roles first, migrations as a member of orbit_migrator, roles again,
# then a real worker, enqueuers (Python, CLI, SQL) and operators (CLI) each as their own role. The
# direct URL is used throughout: PgBouncer in the tests logs every client in as the superuser.

LOGINS = {
    "deployer": "orbit_migrator",
    "deployer2": "orbit_migrator",
    "worker": "orbit_worker",
    "enqueuer": "orbit_enqueuer",
    "operator": "orbit_operator",
    "server": "orbit_server",
}


@dataclass(frozen=True)
class Secured:
    """A database set up with deploy/roles.sql: its superuser URL and one URL per login."""

    admin_url: str
    urls: dict[str, str]

    def env(self, login: str) -> dict[str, str]:
        url = self.urls[login]
        return {"DATABASE_URL": url, "DIRECT_URL": url}

    def connect(self, login: str) -> psycopg.Connection[Any]:
        return psycopg.connect(libpq_url(self.urls[login]), autocommit=True)


def _as(url: str, login: str) -> str:
    return make_url(url).set(username=f"orbit_test_{login}", password=None).render_as_string(False)


def _apply_roles(url: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(ROLES)


@pytest.fixture(scope="module")
def secured(server: TestServer) -> Iterator[Secured]:
    """roles.sql on an empty database, `migrate` as a member of orbit_migrator, roles.sql again."""
    with server.scratch_database() as database:
        admin = database.direct_url
        _apply_roles(admin)
        with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
            for login, group in LOGINS.items():
                name = f"orbit_test_{login}"
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
                    conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
            conn.execute(SIDE_TABLE)  # the test pipelines' plumbing, written as the superuser
        urls = {login: _as(admin, login) for login in LOGINS}
        migrate(urls["deployer"])
        _apply_roles(admin)
        yield Secured(admin, urls)


def _owners(secured: Secured) -> set[str]:
    with psycopg.connect(libpq_url(secured.admin_url)) as conn:
        rows = conn.execute("""
            SELECT pg_get_userbyid(relowner) FROM pg_class
            WHERE relnamespace = 'public'::regnamespace AND relname <> 'executions'
            UNION SELECT pg_get_userbyid(proowner) FROM pg_proc
            WHERE pronamespace = 'public'::regnamespace
        """).fetchall()
    return {row[0] for row in rows}


def test_the_migrator_role_owns_what_migrations_make(secured: Secured) -> None:
    """Migrated by a member of orbit_migrator, every table, view and function is orbit_migrator's."""
    assert _owners(secured) == {"orbit_migrator"}


def test_another_migrator_can_migrate_and_roles_apply_twice(
    secured: Secured, worker_env: dict[str, str]
) -> None:
    """A second member of orbit_migrator downgrades and upgrades (DDL on the first one's tables)."""
    env = {**worker_env, **secured.env("deployer2")}
    alembic = str(Path(sys.executable).parent / "alembic")
    down = subprocess.run(
        [alembic, "downgrade", "-1"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert down.returncode == 0, down.stderr
    up = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    with secured.connect("deployer2") as conn:
        conn.execute("CREATE INDEX orbit_test_idx ON runs (created_at)")
        conn.execute("DROP INDEX orbit_test_idx")
    _apply_roles(secured.admin_url)
    assert _owners(secured) == {"orbit_migrator"}


def _enqueued_every_way(secured: Secured, orbit: Callable[..., Any]) -> dict[str, list[int]]:
    """Runs enqueued as the enqueuer: enqueue(), enqueue_many(), `orbit enqueue`, SQL INSERT."""
    engine = make_engine(secured.urls["enqueuer"])
    try:
        with engine.begin() as conn:
            python = [
                enqueue("test.steps", {}, connection=conn),
                enqueue("test.echo", {"n": 1}, key="k-1", priority=5, max_attempts=2, connection=conn),
                enqueue("test.heartbeat", {}, timeout="30s", delay=0.1, connection=conn),
                enqueue("test.fail", {}, max_attempts=2, connection=conn),
            ]
            again = enqueue("test.echo", {"n": 2}, key="k-1", connection=conn)
        assert again == python[1]
        with engine.begin() as conn:
            many = enqueue_many(
                [("test.noop", {}), ("test.noop", {"i": 2}), ("test.echo", {})], connection=conn
            )
    finally:
        engine.dispose()
    env = secured.env("enqueuer")
    cli = orbit("enqueue", "test.echo", "--params", '{"via": "cli"}', "--key", "k-2", env=env)
    assert cli.returncode == 0, cli.stderr
    from_file = orbit("enqueue", "test.noop", "--from-file", "-", env=env, stdin='{"a": 1}\n{"a": 2}\n')
    assert from_file.returncode == 0, from_file.stderr
    with secured.connect("enqueuer") as conn:
        row = conn.execute("INSERT INTO runs (pipeline, params) VALUES ('test.noop', '{}') RETURNING id")
        sql = [int(row.fetchone()[0])]  # type: ignore[index]
        by_cli = conn.execute("SELECT id FROM runs WHERE params ? 'via' OR params ? 'a'")
        cli_ids = [int(i) for (i,) in by_cli]
    return {"python": python, "many": many, "cli": cli_ids, "sql": sql}


def _stale_setup(secured: Secured) -> dict[str, int]:
    """As the superuser: an interrupted run, a dead worker, an expired run and a due schedule."""
    with psycopg.connect(libpq_url(secured.admin_url), autocommit=True) as conn:
        lost = conn.execute("""
            INSERT INTO runs (pipeline, status, attempt, max_attempts, started_at, heartbeat_at, worker_id)
            VALUES ('test.noop', 'running', 1, 3, now() - interval '1 hour', now() - interval '1 hour',
                    'gone-worker') RETURNING id
        """).fetchone()
        expired = conn.execute("""
            INSERT INTO runs (pipeline, status, started_at, finished_at)
            VALUES ('test.noop', 'succeeded', now() - interval '30 days', now() - interval '30 days')
            RETURNING id
        """).fetchone()
        conn.execute("""
            INSERT INTO workers (id, hostname, pid, heartbeat_at, stopped_at, concurrency, pipeline_filter,
                                 version)
            VALUES ('long-gone', 'h', 1, now() - interval '3 days', now() - interval '3 days', 1, '*', 't')
        """)
        conn.execute("""
            INSERT INTO schedules (pipeline, last_slot, next_slot)
            VALUES ('test.daily', now() - interval '3 days', now() - interval '2 days')
        """)
    assert lost is not None and expired is not None
    return {"lost": lost[0], "expired": expired[0]}


def _statuses(secured: Secured) -> dict[int, str]:
    with psycopg.connect(libpq_url(secured.admin_url)) as conn:
        return dict(conn.execute("SELECT id, status FROM runs").fetchall())  # type: ignore[arg-type]


def _admin_rows(secured: Secured, query: str) -> list[Any]:
    with psycopg.connect(libpq_url(secured.admin_url)) as conn:
        return conn.execute(query).fetchall()


def test_the_worker_role_works_runs_enqueued_every_way(
    secured: Secured,
    worker_env: dict[str, str],
    orbit: Callable[..., Any],
    spawn_worker: Callable[..., subprocess.Popen[str]],
) -> None:
    """As orbit_worker: runs to their end (steps, heartbeats, retries), recovery, retention,
    worker pruning, schedules, /metrics and /health; no database error on the way."""
    enqueued = _enqueued_every_way(secured, orbit)
    setup = _stale_setup(secured)
    port = free_port()
    env = {
        **secured.env("worker"),
        "ORBIT_TEST_SIDE_URL": libpq_url(secured.admin_url),
        "RECOVERY_INTERVAL": "200ms",
        "METRICS_PORT": str(port),
        "QUEUE_METRICS_INTERVAL": "0",
        "LOG_LEVEL": "debug",
    }
    worker = spawn_worker("--concurrency", "2", env=env)
    ids = [i for group in enqueued.values() for i in group] + [setup["lost"]]

    def settled() -> bool:
        statuses = _statuses(secured)
        daily = _admin_rows(secured, "SELECT status FROM runs WHERE pipeline = 'test.daily'")
        return (
            all(statuses.get(i) in ("succeeded", "failed") for i in ids)
            and setup["expired"] not in statuses
            and daily == [("succeeded",)]
        )

    wait_until(settled, 90, "every run to finish, the expired one pruned and the schedule run")
    statuses = _statuses(secured)
    assert [i for i in ids if statuses[i] != "succeeded"] == [enqueued["python"][3]]  # test.fail
    assert _admin_rows(secured, "SELECT id FROM workers WHERE id = 'long-gone'") == []
    assert _admin_rows(secured, "SELECT count(*) FROM run_steps WHERE status = 'succeeded'") == [(3,)]
    values = samples(wait_until(lambda: answers(port), 30, "the metrics endpoint").body)
    assert values["orbit_runs_recovered_total", (("pipeline", "test.noop"),)] == 1
    assert get(port, "/health").status in (200, 503)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    logged = stderr_of(worker)
    assert "permission denied" not in logged and "Database error" not in logged, logged[-3000:]
    assert _admin_rows(secured, "SELECT count(*) FROM workers WHERE stopped_at IS NOT NULL") == [(1,)]


def test_the_operator_role_runs_the_operations_commands(secured: Secured, orbit: Callable[..., Any]) -> None:
    """As orbit_operator: pause, unpause, drain, cancel, resume, recover, prune and every listing."""
    with psycopg.connect(libpq_url(secured.admin_url), autocommit=True) as conn:
        pending = conn.execute("INSERT INTO runs (pipeline) VALUES ('test.noop') RETURNING id").fetchone()
        failed = conn.execute("""
            INSERT INTO runs (pipeline, status, attempt, max_attempts, started_at, finished_at, error)
            VALUES ('test.noop', 'failed', 1, 1, now(), now(), 'x') RETURNING id
        """).fetchone()
        conn.execute("""
            INSERT INTO runs (pipeline, status, attempt, max_attempts, started_at, heartbeat_at, worker_id)
            VALUES ('test.noop', 'running', 1, 3, now() - interval '1 hour', now() - interval '1 hour',
                    'gone')
        """)
        conn.execute("""
            INSERT INTO runs (pipeline, status, started_at, finished_at)
            VALUES ('test.noop', 'cancelled', now() - interval '40 days', now() - interval '40 days')
        """)
    assert pending is not None and failed is not None
    env = secured.env("operator")
    commands: list[tuple[list[str], tuple[int, ...]]] = [
        (["pause", "test.*"], (0,)),
        (["pauses"], (0,)),
        (["drain", "test.*", "--timeout", "1s"], (0, 1)),
        (["unpause", "test.*"], (0,)),
        (["cancel", str(pending[0])], (0,)),
        (["resume", str(failed[0])], (0,)),
        (["check-interrupted"], (1,)),
        (["recover", "--auto-resume"], (0,)),
        (["prune", "--older-than", "30d"], (0,)),
        (["prune", "--dry-run"], (0,)),
        (["status", str(failed[0])], (0,)),
        (["runs"], (0,)),
        (["workers"], (0,)),
        (["schedules"], (0,)),
        (["metrics"], (0,)),
        (["health"], (0, 1, 2)),
    ]
    for args, expected in commands:
        done = orbit(*args, env=env)
        assert done.returncode in expected, (args, done.stdout, done.stderr)
        assert "permission denied" not in done.stderr, (args, done.stderr)
    statuses = _statuses(secured)
    assert (statuses[pending[0]], statuses[failed[0]]) == ("cancelled", "pending")


FORBIDDEN_DDL = [
    "CREATE TABLE intruder (id int)",
    "DROP TABLE runs",
    "ALTER TABLE runs ADD COLUMN x int",
    "TRUNCATE runs",
    "CREATE INDEX intruder_idx ON runs (key)",
    "DROP TRIGGER runs_id_from_sequence ON runs",
]

FORBIDDEN = {
    "worker": [
        "DELETE FROM alembic_version",
        "UPDATE alembic_version SET version_num = 'x'",
        "DELETE FROM pauses",
        "INSERT INTO pauses (pattern, like_pattern) VALUES ('x', 'x')",
        "UPDATE workers SET id = 'someone-else'",
        "UPDATE runs SET params = '{}'",
        "UPDATE runs SET pipeline = 'test.noop'",
        "UPDATE runs SET id = id + 1000",
        "INSERT INTO runs (pipeline, status, worker_id) VALUES ('test.noop', 'running', 'w')",
        "DELETE FROM run_steps",
        "DELETE FROM schedules",
        "SELECT nextval('runs_id_seq')",
        "SELECT setval('runs_id_seq', 1)",
    ],
    "enqueuer": [
        "INSERT INTO runs (pipeline, status, result) VALUES ('test.noop', 'succeeded', '{\"forged\": 1}')",
        "INSERT INTO runs (pipeline, status, worker_id, heartbeat_at)"
        " VALUES ('test.noop', 'running', 'w', 'infinity')",
        "INSERT INTO runs (pipeline, attempt) VALUES ('test.noop', 5)",
        "INSERT INTO runs (pipeline, created_at) VALUES ('test.noop', 'infinity')",
        "UPDATE runs SET status = 'pending'",
        "DELETE FROM runs",
        "DELETE FROM alembic_version",
        "INSERT INTO workers (id, hostname, pid, concurrency, pipeline_filter, version)"
        " VALUES ('x', 'h', 1, 1, '*', 't')",
        "INSERT INTO pauses (pattern, like_pattern) VALUES ('x', 'x')",
        "DELETE FROM pauses",
        "SELECT setval('runs_id_seq', 1)",
    ],
    "operator": [
        "INSERT INTO runs (pipeline) VALUES ('test.noop')",
        "UPDATE runs SET result = '1'",
        "UPDATE runs SET worker_id = 'x'",
        "DELETE FROM alembic_version",
        "UPDATE workers SET heartbeat_at = 'infinity'",
        "DELETE FROM workers",
        "DELETE FROM run_steps",
    ],
}


def test_the_server_role_runs_orbit_serve_and_orbit_token(
    secured: Secured, orbit: Callable[..., Any], make_settings: Callable[..., Any]
) -> None:
    """As orbit_server: tokens are made and checked, the console signs in, and every endpoint's
    statements are allowed (no 403 from the database, no 5xx)."""
    from fastapi.testclient import TestClient

    from app import registry
    from app.database import make_engine
    from app.serve.app import create_app

    made = orbit("token", "create", "ops", "--role", "admin", env=secured.env("server"))
    assert made.returncode == 0, made.stderr
    bearer = {"Authorization": f"Bearer {made.stdout.splitlines()[-1]}"}
    engine = make_engine(secured.urls["server"])
    app = create_app(make_settings(DATABASE_URL=secured.urls["server"]), engine, registry.all_pipelines())
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            run_id = client.post("/queue/enqueue", json={"pipeline": "test.noop"}, headers=bearer).json()[
                "id"
            ]
            batch = client.post("/queue/enqueue", json=[{"pipeline": "test.noop"}] * 3, headers=bearer)
            assert batch.status_code == 201
            calls = [
                ("get", f"/queue/status/{run_id}", None),
                ("get", "/queue/stats", None),
                ("get", "/queue/workers", None),
                ("get", "/api/runs?text=x", None),
                ("get", "/api/pipelines", None),
                ("get", "/api/metrics", None),
                ("get", "/metrics", None),
                ("get", "/api/tokens", None),
                ("post", f"/api/runs/{run_id}/cancel", None),
                ("post", f"/api/runs/{run_id}/retry", {}),
                ("post", "/api/runs/cancel", {"pipeline": "test.noop"}),
                ("post", "/api/runs/retry", {"pipeline": "test.noop"}),
                ("post", "/api/pipelines/pause", {"pipeline": "test.noop"}),
                ("post", "/api/pipelines/drain", {"pipeline": "test.noop"}),
                ("post", "/api/pipelines/unpause", {"pipeline": "test.noop"}),
                ("post", "/queue/flush", {"pipeline": "test.*"}),
                ("post", "/api/tokens", {"name": "viewer-1"}),
                ("delete", "/api/tokens/viewer-1", None),
            ]
            for method, path, body in calls:
                reply = client.request(method, path, json=body, headers=bearer)
                assert reply.status_code < 300, (path, reply.text)
            signed_in = client.post(
                "/login", data={"token": bearer["Authorization"][7:]}, follow_redirects=False
            )
            assert signed_in.status_code == 303 and client.get("/console/overview").status_code == 200
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("login", "statement"),
    [(login, s) for login, statements in FORBIDDEN.items() for s in statements]
    + [(login, s) for login in ("worker", "enqueuer", "operator") for s in FORBIDDEN_DDL],
)
def test_what_a_role_does_not_need_is_refused(secured: Secured, login: str, statement: str) -> None:
    """Each role is refused every write its code never makes."""
    with secured.connect(login) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_an_enqueued_id_must_come_from_the_sequence(secured: Secured) -> None:
    """An id beyond the sequence is refused, so the next ordinary insert still gets a free id."""
    with secured.connect("enqueuer") as conn:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="currval"):
            conn.execute("INSERT INTO runs (id, pipeline) VALUES (1000000, 'test.noop')")
        (taken,) = conn.execute("SELECT nextval('runs_id_seq')").fetchone()  # type: ignore[misc]
        with pytest.raises(psycopg.errors.CheckViolation, match="not taken from its sequence"):
            conn.execute("INSERT INTO runs (id, pipeline) VALUES (%s, 'test.noop')", (taken + 1,))
        conn.execute("INSERT INTO runs (id, pipeline) VALUES (%s, 'test.noop')", (taken,))
        row = conn.execute("INSERT INTO runs (pipeline) VALUES ('test.noop') RETURNING id").fetchone()
        assert row is not None and row[0] == taken + 1


def test_the_enqueuer_role_cannot_claim_runs(secured: Secured) -> None:
    """The claim (an UPDATE of status) is refused to the enqueuer."""
    engine = make_engine(secured.urls["enqueuer"])
    try:
        with pytest.raises(ProgrammingError, match="permission denied"), engine.begin() as conn:
            enqueue("test.noop", {}, connection=conn)
            queries.exchange(conn, worker_id="w", limit=1, defaults={"test.noop": (3, 60.0)})
    finally:
        engine.dispose()


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
