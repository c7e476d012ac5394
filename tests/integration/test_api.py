"""The HTTP API of orbit serve, in process against the real database: every endpoint, its bad
inputs (a 4xx with one line, nothing written) and its role boundaries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from structlog.testing import capture_logs

from app import access, enqueue_many, registry
from app.jsontext import MAX_DEPTH
from app.serve.app import create_app
from app.settings import Settings
from tests.support import http
from tests.support.runs import fetch_run, finished_run, pending_run, running_run, worker_row

BASE = "http://127.0.0.1"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    """A client of a fresh application (open mode until a test creates a token)."""
    app = create_app(settings, engine, registry.all_pipelines())
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def token(engine: Engine, client: TestClient) -> Callable[[str], dict[str, str]]:
    """Create a token of a role; returns the Authorization header that carries it."""

    def create(role: str) -> dict[str, str]:
        with engine.begin() as conn:
            secret = access.create(conn, f"{role}-token", role, "test")
        client.app.state.orbit.auth.forget()  # type: ignore[attr-defined]
        return {"Authorization": f"Bearer {secret}"}

    return create


def enqueue_all(engine: Engine, runs: list[tuple[str, dict[str, Any]]]) -> list[int]:
    with engine.begin() as conn:
        return enqueue_many(runs, connection=conn)


def count_runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())


def error_of(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert "\n" not in body["error"]
    return str(body["error"])


# --- /queue/enqueue -------------------------------------------------------------------------------


def test_enqueue_inserts_a_run_and_answers_its_id(client: TestClient, engine: Engine) -> None:
    """POST /queue/enqueue answers 201 with the new run's id, stored with its params and options."""
    reply = client.post(
        "/queue/enqueue",
        json={"pipeline": "test.echo", "params": {"a": 1}, "priority": 5, "delay": "1h", "max_attempts": 2},
    )
    assert reply.status_code == 201
    run = fetch_run(engine, reply.json()["id"])
    assert (run.pipeline, run.params, run.priority, run.max_attempts) == ("test.echo", {"a": 1}, 5, 2)
    assert run.run_at > run.created_at


def test_a_key_held_by_a_live_run_answers_200_with_its_id(client: TestClient, engine: Engine) -> None:
    """The same key twice: the second answer is 200 and the first run's id; one run exists."""
    first = client.post("/queue/enqueue", json={"pipeline": "test.noop", "key": "k-1"})
    again = client.post("/queue/enqueue", json={"pipeline": "test.noop", "key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert count_runs(engine) == 1


def test_a_list_enqueues_a_batch_in_one_transaction(client: TestClient, engine: Engine) -> None:
    """A JSON list enqueues every run (201, ids in order); one bad run anywhere inserts none."""
    reply = client.post("/queue/enqueue", json=[{"pipeline": "test.noop"}, {"pipeline": "test.echo"}])
    assert reply.status_code == 201
    ids = reply.json()["ids"]
    assert len(ids) == 2 and ids[0] < ids[1]
    bad = client.post("/queue/enqueue", json=[{"pipeline": "test.noop"}, {"pipeline": "nope"}])
    assert bad.status_code == 400
    assert "unknown pipeline 'nope'" in error_of(bad)
    assert count_runs(engine) == 2


TOO_DEEP: dict[str, Any] = {}  # params one level deeper than any run's may be
for _ in range(MAX_DEPTH):
    TOO_DEEP = {"a": TOO_DEEP}


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"pipeline": "nope"}, 400, "unknown pipeline"),
        ({"pipeline": "test.noop", "params": [1]}, 422, "params"),
        ({"pipeline": "test.noop", "params": "x"}, 422, "params"),
        ({"pipeline": "test.noop", "delay": "soon"}, 400, "delay"),
        ({"pipeline": "test.noop", "delay": -5}, 400, "delay"),
        ({"pipeline": "test.noop", "timeout": "100000y"}, 400, "timeout"),
        ({"pipeline": "test.noop", "params": {"t": "a\u0000b"}}, 400, "NUL"),
        ({"pipeline": "test.noop", "key": "a\u0000b"}, 400, "NUL"),
        ({"pipeline": "test.noop", "priority": 2**40}, 422, "priority"),
        ({"pipeline": "test.noop", "max_attempts": 0}, 422, "max_attempts"),
        ({"pipeline": "test.noop", "colour": "red"}, 422, "colour"),
        ({"pipeline": "test.noop", "params": TOO_DEEP}, 400, "params are nested too deeply (more than 200"),
        ({"params": {}}, 422, "pipeline"),
        ([], 400, "empty"),
    ],
)
def test_bad_enqueues_are_refused_in_one_line_and_insert_nothing(
    client: TestClient, engine: Engine, body: Any, status: int, says: str
) -> None:
    """Each bad input gets its 4xx and a one-line error naming the problem; no run is inserted."""
    reply = client.post("/queue/enqueue", json=body)
    assert reply.status_code == status, reply.text
    assert says in error_of(reply)
    assert count_runs(engine) == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{nope", 422, "JSON decode error"),
        (b'{"pipeline": "test.noop", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "too deeply"),
    ],
    ids=["malformed", "nested-100000-deep"],
)
def test_a_body_that_is_not_json_is_refused(
    client: TestClient, engine: Engine, body: bytes, status: int, says: str
) -> None:
    """Malformed JSON, or JSON nested past the interpreter's limit, is refused in one line, not a 500."""
    reply = client.post("/queue/enqueue", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == status
    assert says in error_of(reply)
    assert count_runs(engine) == 0


def test_typed_params_are_validated_and_stored_with_their_defaults(
    client: TestClient, engine: Engine
) -> None:
    """A pipeline with a params model refuses params that do not fit it, naming the field, and
    stores what fits as the model dumps it."""
    bad = client.post("/queue/enqueue", json={"pipeline": "test.typed", "params": {"days": "many"}})
    assert bad.status_code == 400
    assert error_of(bad).startswith("params.customer: Field required")
    good = client.post("/queue/enqueue", json={"pipeline": "test.typed", "params": {"customer": "acme"}})
    assert fetch_run(engine, good.json()["id"]).params == {"customer": "acme", "days": 7, "format": "csv"}


# --- reading --------------------------------------------------------------------------------------


def test_status_shows_a_run_with_its_steps_and_errors(client: TestClient, engine: Engine) -> None:
    """GET /queue/status/{id}: the run's fields, params, errors and steps; 404 when unknown."""
    run_id = client.post("/queue/enqueue", json={"pipeline": "test.echo", "params": {"x": "<b>"}}).json()[
        "id"
    ]
    with engine.begin() as conn:
        conn.execute(
            text("""INSERT INTO run_steps (run_id, name, position, status, output, attempt, finished_at)
                    VALUES (:id, 'fetch', 0, 'succeeded', '{"n": 1}', 1, now())"""),
            {"id": run_id},
        )
    body = client.get(f"/queue/status/{run_id}").json()
    assert body["params"] == {"x": "<b>"} and body["status"] == "pending" and body["errors"] == []
    assert [(s["name"], s["status"], s["output"]) for s in body["steps"]] == [
        ("fetch", "succeeded", {"n": 1})
    ]
    assert body["steps"][0]["duration_s"] >= 0
    missing = client.get("/queue/status/999999")
    assert missing.status_code == 404 and "does not exist" in error_of(missing)
    assert client.get("/queue/status/0").status_code == 422
    assert client.get("/queue/status/abc").status_code == 422


def test_stats_count_by_status_and_pipeline_with_the_fleet_report(client: TestClient, engine: Engine) -> None:
    """GET /queue/stats: live runs now, finished ones in the window, and the guide's report fields."""
    pending_run(engine, "test.noop")
    pending_run(engine, "test.noop", due_ago=-3600)
    finished_run(engine, "test.echo", "succeeded", duration=2.0)
    finished_run(engine, "test.echo", "failed", duration=4.0)
    finished_run(engine, "test.echo", "succeeded", ago=7200)  # outside the window
    body = client.get("/queue/stats?since=1h").json()
    assert body["byStatus"] == {"pending": 1, "scheduled": 1, "succeeded": 1, "failed": 1}
    assert body["byPipeline"]["test.echo"] == {"succeeded": 1, "failed": 1}
    report = body["report"]
    assert (report["totalRuns"], report["succeeded"], report["failed"]) == (2, 1, 1)
    assert report["successRate"] == "50.00%" and report["errorRate"] == "50.00%"
    assert report["avgExecutionTime"] == "3000ms" and report["min"] == "2000ms" and report["max"] == "4000ms"
    assert report["lastRunTime"] is not None and report["runsPerHour"] == "2.00"
    assert client.get("/queue/stats?since=forever").status_code == 400
    assert client.get("/api/metrics?since=0").status_code == 400
    assert client.get("/api/metrics").json()["totalRuns"] == 2


def test_workers_list_heartbeat_ages_and_running_runs(client: TestClient, engine: Engine) -> None:
    """GET /queue/workers: each worker with its heartbeat age and the runs it holds."""
    worker_row(engine, "w-1", heartbeat_ago=2.0)
    run_id = running_run(engine, "test.sleep", "w-1")
    (worker,) = client.get("/queue/workers").json()["workers"]
    assert worker["id"] == "w-1" and worker["state"] == "running"
    assert 1.5 < worker["heartbeat_age_s"] < 30
    assert [r["id"] for r in worker["runs"]] == [run_id]


def test_health_has_the_guides_shape_and_503_on_error(client: TestClient, engine: Engine) -> None:
    """GET /api/health: status, message, lastActivity, stuckRuns; 503 when runs wait and no worker lives."""
    assert client.get("/api/health").json()["status"] == "healthy"
    pending_run(engine, "test.noop")
    reply = client.get("/api/health")
    assert reply.status_code == 503
    assert {"status", "message", "lastActivity", "stuckRuns"} <= set(reply.json())
    assert "no live worker" in reply.json()["message"]


def test_metrics_are_prometheus_text_of_the_fleet(client: TestClient, engine: Engine) -> None:
    """GET /metrics: queue depth by pipeline and status, finished runs, workers alive, failure ratio."""
    pending_run(engine, "test.noop", due_ago=30)
    finished_run(engine, "test.echo", "failed")
    worker_row(engine, "w-1")
    reply = client.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    samples = http.samples(reply.text)
    assert samples[("orbit_queue_depth", (("pipeline", "test.noop"), ("status", "pending")))] == 1
    assert samples[("orbit_oldest_pending_run_age_seconds", (("pipeline", "test.noop"),))] >= 29
    assert samples[("orbit_fleet_finished_runs", (("pipeline", "test.echo"), ("status", "failed")))] == 1
    assert samples[("orbit_fleet_workers_alive", ())] == 1
    assert samples[("orbit_fleet_failure_ratio", ())] == 1.0


def test_runs_are_filtered_and_paged_with_a_cursor(client: TestClient, engine: Engine) -> None:
    """GET /api/runs: status, pipeline glob, text (a literal, _ included) and time filters;
    next_before pages through every run exactly once."""
    ids = enqueue_all(engine, [("test.echo", {"n": i, "tag": "a_b" if i % 2 else "axb"}) for i in range(7)])
    finished_run(engine, "test.noop", "failed", error="boom: disk full")
    by_text = client.get("/api/runs", params={"text": "a_b"}).json()["runs"]
    assert sorted(r["id"] for r in by_text) == ids[1::2]
    assert [r["pipeline"] for r in client.get("/api/runs?status=failed").json()["runs"]] == ["test.noop"]
    assert len(client.get("/api/runs", params={"text": "DISK"}).json()["runs"]) == 1
    assert len(client.get("/api/runs", params={"pipeline": "test.e*"}).json()["runs"]) == 7
    assert client.get("/api/runs", params={"until": "2000-01-01T00:00:00Z"}).json()["runs"] == []
    seen: list[int] = []
    before: int | None = None
    while True:
        page = client.get("/api/runs", params={"limit": 3, **({"before": before} if before else {})}).json()
        seen += [r["id"] for r in page["runs"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 8
    for bad in ({"status": "done"}, {"limit": 0}, {"limit": 10_000}, {"pipeline": "a[b]"}, {"since": "x"}):
        reply = client.get("/api/runs", params=bad)
        assert 400 <= reply.status_code < 500, bad
        error_of(reply)


# --- changing runs --------------------------------------------------------------------------------


def test_cancel_resume_and_retry_one_run(client: TestClient, engine: Engine) -> None:
    """cancel a pending run; resume a failed one (same run, pending); retry makes a new run with
    the old params or edited ones; each refuses a run in the wrong state with 409, unknown with 404."""
    pending = pending_run(engine, "test.noop")
    assert client.post(f"/api/runs/{pending}/cancel").json()["previous"] == "pending"
    assert fetch_run(engine, pending).status == "cancelled"
    assert client.post(f"/api/runs/{pending}/cancel").status_code == 409
    assert client.post("/api/runs/999999/cancel").status_code == 404

    failed = finished_run(engine, "test.echo", "failed")
    again = client.post(f"/api/runs/{failed}/retry", json={"params": {"edited": True}})
    assert again.status_code == 201
    new = fetch_run(engine, again.json()["id"])
    assert (new.pipeline, new.params, new.status) == ("test.echo", {"edited": True}, "pending")
    assert client.post(f"/api/runs/{failed}/resume").json()["status"] == "pending"
    assert fetch_run(engine, failed).status == "pending"
    assert client.post(f"/api/runs/{failed}/retry").status_code == 409  # live again
    assert client.post(f"/api/runs/{failed}/resume").status_code == 409
    assert client.post("/api/runs/999999/resume").status_code == 404
    assert client.post("/api/runs/999999/retry").status_code == 404
    typed = finished_run(engine, "test.typed", "failed")
    refused = client.post(f"/api/runs/{typed}/retry", json={"params": {"customer": ""}})
    assert refused.status_code == 400 and "params.customer" in error_of(refused)


def test_bulk_actions_take_the_list_filters(client: TestClient, engine: Engine) -> None:
    """POST /api/runs/cancel and /retry act on exactly the runs the filter matches."""
    keep = pending_run(engine, "test.echo")
    doomed = [pending_run(engine, "test.noop") for _ in range(3)]
    cancelled = client.post("/api/runs/cancel", json={"pipeline": "test.noop"}).json()["cancelled"]
    assert cancelled == sorted(doomed)
    assert fetch_run(engine, keep).status == "pending"
    failed = [finished_run(engine, "test.noop", "failed") for _ in range(2)]
    finished_run(engine, "test.noop", "succeeded")
    retried = client.post("/api/runs/retry", json={"pipeline": "test.noop", "status": "failed"}).json()
    assert sorted(r["retry_of"] for r in retried["retried"]) == failed
    assert client.post("/api/runs/cancel", json={"status": "nope"}).status_code == 422


def test_an_operator_acts_on_at_most_a_thousand_runs_at_once(
    client: TestClient, engine: Engine, token: Callable[[str], dict[str, str]]
) -> None:
    """Over 1,000 matching runs a bulk action needs the admin role (403, nothing changed)."""
    enqueue_all(engine, [("test.noop", {})] * 1001)
    operator, admin = token("operator"), token("admin")
    refused = client.post("/api/runs/cancel", json={"pipeline": "test.noop"}, headers=operator)
    assert refused.status_code == 403 and "admin" in error_of(refused)
    assert client.get("/queue/stats", headers=operator).json()["byStatus"] == {"pending": 1001}
    done = client.post("/api/runs/cancel", json={"pipeline": "test.noop"}, headers=admin)
    assert len(done.json()["cancelled"]) == 1001


def test_flush_cancels_the_pending_runs_of_matching_pipelines(
    client: TestClient, engine: Engine, token: Callable[[str], dict[str, str]]
) -> None:
    """POST /queue/flush is an admin's: it cancels pending runs of the glob only, and says how many."""
    pending_run(engine, "test.noop")
    pending_run(engine, "test.noop")
    other = pending_run(engine, "test.echo")
    held = running_run(engine, "test.noop", "w-1")
    operator, admin = token("operator"), token("admin")
    assert client.post("/queue/flush", json={"pipeline": "test.n*"}, headers=operator).status_code == 403
    assert client.post("/queue/flush", json={"pipeline": "test.n*"}, headers=admin).json() == {"cancelled": 2}
    assert fetch_run(engine, other).status == "pending" and fetch_run(engine, held).status == "running"
    assert client.post("/queue/flush", json={"pipeline": "a[b"}, headers=admin).status_code == 400


# --- pipelines ------------------------------------------------------------------------------------


def test_pipelines_list_settings_schedules_and_pauses(client: TestClient, engine: Engine) -> None:
    """GET /api/pipelines: every loaded pipeline with its settings, next fire time and params schema."""
    client.post("/api/pipelines/pause", json={"pipeline": "test.da*"})
    listed = {p["name"]: p for p in client.get("/api/pipelines").json()["pipelines"]}
    daily = listed["test.daily"]
    assert daily["schedule"] == "0 6 * * *" and daily["next_fire"] is not None
    assert daily["paused_by"] == ["test.da*"]
    assert listed["test.sleep"]["max_attempts"] == 1 and listed["test.sleep"]["paused_by"] == []
    assert listed["test.typed"]["params_schema"]["required"] == ["customer"]


def test_pause_unpause_and_drain(client: TestClient, engine: Engine) -> None:
    """pause and unpause a glob (a typo is refused); drain pauses and lists what still runs."""
    assert client.post("/api/pipelines/pause", json={"pipeline": "test.noop"}).json()["already"] is False
    assert client.post("/api/pipelines/pause", json={"pipeline": "test.noop"}).json()["already"] is True
    assert client.post("/api/pipelines/unpause", json={"pipeline": "test.noop"}).json()["was_paused"] is True
    typo = client.post("/api/pipelines/pause", json={"pipeline": "tset.*"})
    assert typo.status_code == 400 and "nothing was paused" in error_of(typo)
    run_id = running_run(engine, "test.sleep", "w-1")
    drained = client.post("/api/pipelines/drain", json={"pipeline": "test.sleep"}).json()
    assert drained["drained"] is False and [r["id"] for r in drained["running"]] == [run_id]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pattern FROM pauses")).scalars().all() == ["test.sleep"]


def test_limits_are_shown_set_and_cleared(client: TestClient, engine: Engine) -> None:
    """GET /api/limits shows the code's limits and the overrides; PUT sets an override (a typo, a
    bad value and NUL are refused, nothing written); DELETE removes it."""
    shown = client.get("/api/limits").json()
    capped = next(p for p in shown["pipelines"] if p["pipeline"] == "test.capped")
    assert capped["concurrency"] == "2 (code)" and capped["group_concurrency"] == "1 (code)"
    done = client.put("/api/limits", json={"pattern": "test.cap*", "concurrency": 5, "rate": "10/s"})
    assert done.status_code == 200 and done.json()["limits"] == "concurrency 5, rate 10/s"
    capped = next(p for p in client.get("/api/limits").json()["pipelines"] if p["pipeline"] == "test.capped")
    assert capped["concurrency"] == "5 (override test.cap*)" and capped["rate"] == "10/s (override test.cap*)"
    assert capped["group_concurrency"] == "1 (code)"
    for bad, said in [
        ({"pattern": "tset.*", "concurrency": 1}, "nothing was limited"),
        ({"pattern": "test.*", "rate": "fast"}, "expected a count per window"),
        ({"pattern": "test.*"}, "give a concurrency"),
        ({"pattern": "test.\u0000", "concurrency": 1}, ""),
    ]:
        refused = client.put("/api/limits", json=bad)
        assert refused.status_code in (400, 422), (bad, refused.text)
        assert said in error_of(refused)
    assert client.put("/api/limits", json={"pattern": "test.*", "concurrency": 0}).status_code == 422
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pattern FROM limits")).scalars().all() == ["test.cap*"]
    assert client.delete("/api/limits", params={"pattern": "test.cap*"}).json()["removed"] is True
    assert client.delete("/api/limits", params={"pattern": "test.cap*"}).json()["removed"] is False


# --- who may do what ------------------------------------------------------------------------------

READS = [
    "/queue/stats",
    "/queue/workers",
    "/api/runs",
    "/api/pipelines",
    "/api/limits",
    "/api/metrics",
    "/metrics",
]


def test_with_tokens_every_call_needs_one(client: TestClient, token: Callable[[str], dict[str, str]]) -> None:
    """Once a token exists, calls without one (or with a bad one) are 401; health stays open."""
    token("viewer")
    for path in READS:
        assert client.get(path).status_code == 401, path
    assert client.post("/queue/enqueue", json={"pipeline": "test.noop"}).status_code == 401
    assert client.get("/queue/stats", headers={"Authorization": "Bearer orbit_wrong"}).status_code == 401
    assert client.get("/queue/stats", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/api/health").status_code in (200, 503)


def test_roles_bound_what_each_token_may_do(
    client: TestClient, engine: Engine, token: Callable[[str], dict[str, str]]
) -> None:
    """viewer reads only; operator also writes runs and pipelines; admin also flushes and manages tokens."""
    viewer, operator, admin = token("viewer"), token("operator"), token("admin")
    for path in READS:
        assert client.get(path, headers=viewer).status_code == 200, path
    run = {"pipeline": "test.noop"}
    assert client.post("/queue/enqueue", json=run, headers=viewer).status_code == 403
    assert client.post("/api/pipelines/pause", json=run, headers=viewer).status_code == 403
    limit = {"pattern": "test.noop", "concurrency": 1}
    assert client.put("/api/limits", json=limit, headers=viewer).status_code == 403
    assert client.post("/queue/enqueue", json=run, headers=operator).status_code == 201
    assert client.post("/queue/flush", json=run, headers=operator).status_code == 403
    assert client.get("/api/tokens", headers=operator).status_code == 403
    assert client.post("/queue/flush", json=run, headers=admin).status_code == 200
    assert count_runs(engine) == 1


def test_tokens_api_shows_a_secret_once_and_revokes(
    client: TestClient, token: Callable[[str], dict[str, str]]
) -> None:
    """An admin creates a token (its secret in that answer only), lists tokens without secrets, and
    revokes one: its calls are refused from then on."""
    admin = token("admin")
    made = client.post("/api/tokens", json={"name": "ci", "role": "operator"}, headers=admin).json()
    assert made["secret"].startswith("orbit_")
    listed = client.get("/api/tokens", headers=admin).json()["tokens"]
    assert {t["name"] for t in listed} == {"admin-token", "ci"}
    assert all(made["secret"] not in str(t) for t in listed)
    ci = {"Authorization": f"Bearer {made['secret']}"}
    assert client.post("/queue/enqueue", json={"pipeline": "test.noop"}, headers=ci).status_code == 201
    assert client.delete("/api/tokens/ci", headers=admin).status_code == 200
    assert client.post("/queue/enqueue", json={"pipeline": "test.noop"}, headers=ci).status_code == 401
    assert client.post("/api/tokens", json={"name": "bad name!"}, headers=admin).status_code == 400
    assert client.post("/api/tokens", json={"name": "x", "role": "root"}, headers=admin).status_code == 400
    assert client.delete("/api/tokens/ci", headers=admin).status_code == 400


def test_open_mode_answers_only_on_a_loopback_host(engine: Engine, settings: Settings) -> None:
    """Without tokens, a request whose Host is not a loopback name is refused (DNS rebinding)."""
    app = create_app(settings, engine, registry.all_pipelines())
    with TestClient(app, base_url="http://orbit.example.com") as remote:
        assert remote.get("/queue/stats").status_code == 401
    with TestClient(app, base_url="http://localhost:8080") as local:
        assert local.get("/queue/stats").status_code == 200


def test_writes_are_logged_with_the_token_name(
    client: TestClient, token: Callable[[str], dict[str, str]]
) -> None:
    """Every write names the token that made it in the log."""
    operator = token("operator")
    with capture_logs() as logs:
        client.post("/queue/enqueue", json={"pipeline": "test.noop"}, headers=operator)
        client.post("/api/pipelines/pause", json={"pipeline": "test.noop"}, headers=operator)
    writes = [(e["token"], e["action"]) for e in logs if e.get("event") == "Write"]
    assert writes == [("operator-token", "enqueue"), ("operator-token", "pause")]


def test_writes_past_the_rate_are_refused_with_429(
    engine: Engine, make_settings: Callable[..., Settings], token: Callable[[str], dict[str, str]]
) -> None:
    """Past SERVE_WRITE_RATE writes a minute a token gets 429 with Retry-After; reads go on."""
    app = create_app(make_settings(SERVE_WRITE_RATE=3), engine, registry.all_pipelines())
    with TestClient(app, base_url=BASE) as limited:
        codes = [limited.post("/queue/enqueue", json={"pipeline": "test.noop"}).status_code for _ in range(4)]
        assert codes == [201, 201, 201, 429]
        last = limited.post("/queue/enqueue", json={"pipeline": "test.noop"})
        assert int(last.headers["Retry-After"]) >= 1 and "too many writes" in error_of(last)
        assert limited.get("/queue/stats").status_code == 200
    assert count_runs(engine) == 3


def test_openapi_document_lists_the_endpoints(client: TestClient) -> None:
    """GET /openapi.json documents the queue, runs, pipelines and tokens endpoints."""
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/queue/enqueue", "/queue/status/{run_id}", "/queue/flush", "/api/runs", "/api/tokens"):
        assert path in paths
    assert "/console/bulk" not in paths
    assert client.get("/docs").status_code == 200


def test_nul_characters_are_refused_in_one_line(client: TestClient, engine: Engine) -> None:
    """A NUL in a glob, a filter or a name is a 400 that says so, never a database error."""
    pending_run(engine, "test.echo")
    for method, path, body in (
        ("POST", "/queue/flush", {"pipeline": "test.\x00*"}),
        ("POST", "/api/pipelines/pause", {"pipeline": "a\x00"}),
        ("POST", "/api/pipelines/unpause", {"pipeline": "a\x00"}),
        ("GET", "/api/runs?text=a%00", None),
        ("POST", "/api/tokens", {"name": "a\x00", "role": "viewer"}),
    ):
        reply = client.request(method, path, json=body)
        assert reply.status_code in (400, 422), (path, reply.text)
        assert "NUL" in error_of(reply) or "name" in error_of(reply), (path, reply.text)
    assert count_runs(engine) == 1


def test_a_body_sent_without_the_json_type_or_of_the_wrong_shape_says_so(
    client: TestClient, engine: Engine
) -> None:
    """``curl -d`` without Content-Type: 415 naming the header; a wrong item in a list names its index."""
    form = client.post("/queue/enqueue", content=b'{"pipeline": "test.echo"}')
    assert form.status_code == 415 and "Content-Type: application/json" in error_of(form)
    one = client.post("/queue/enqueue", json={"pipeline": "test.echo", "params": [1]})
    assert (one.status_code, error_of(one)) == (422, "params: Input should be a valid dictionary")
    listed = client.post("/queue/enqueue", json=[{"pipeline": "test.echo", "params": {}}, {"params": 1}])
    assert listed.status_code == 422 and error_of(listed).startswith("1.")
    assert count_runs(engine) == 0
