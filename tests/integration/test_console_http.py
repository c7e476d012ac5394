"""The console over HTTP, in process against the real database: signing in, the cookie and the
CSRF and origin checks that guard a session's writes, every page and fragment, hostile text shown
escaped, and the live views' change reader. The browser test (tests/acceptance/test_console.py)
drives the same pages in Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app import access, enqueue, registry
from app.serve.app import create_app
from app.serve.events import Changes
from app.settings import Settings
from tests.support.runs import fetch_run, finished_run, pending_run

BASE = "http://127.0.0.1:8080"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="alert(1)">'


@pytest.fixture
def client(engine: Engine, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    app = create_app(make_settings(), engine, registry.all_pipelines())
    with TestClient(app, base_url=BASE, follow_redirects=False) as test_client:
        yield test_client


def make_token(engine: Engine, client: TestClient, role: str = "operator") -> str:
    with engine.begin() as conn:
        secret = access.create(conn, f"{role}-person", role, "test")
    client.app.state.orbit.auth.forget()  # type: ignore[attr-defined]
    return secret


def sign_in(client: TestClient, secret: str) -> str:
    """Sign in through the login form; the CSRF token the pages hand to htmx."""
    reply = client.post("/login", data={"token": secret})
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    page = client.get("/runs")
    assert page.status_code == 200
    found = re.search(r"X-CSRF-Token&#34;: &#34;([^&]+)&#34;", page.text)
    assert found, "the page carries no CSRF token for htmx"
    return found.group(1)


def pause_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT pattern FROM pauses"))]


def test_without_a_session_pages_lead_to_the_login_and_fragments_say_401(
    client: TestClient, engine: Engine
) -> None:
    make_token(engine, client)
    run_id = pending_run(engine, "test.echo")
    for path in ("/", "/runs", "/pipelines", "/workers", f"/runs/{run_id}"):
        reply = client.get(path)
        assert (reply.status_code, reply.headers["location"]) == (303, "/login"), path
    fragment = client.get("/console/overview", headers={"HX-Request": "true"})
    assert fragment.status_code == 303  # htmx follows it to the login page
    api = client.get("/api/runs")
    assert api.status_code == 401 and "error" in api.json()


def test_a_wrong_token_does_not_sign_in(client: TestClient, engine: Engine) -> None:
    make_token(engine, client)
    reply = client.post("/login", data={"token": "orbit_not-a-real-one"})
    assert reply.status_code == 401
    assert "not valid" in reply.text and "orbit_session" not in reply.headers.get("set-cookie", "")
    assert client.get("/").status_code == 303


def test_signing_in_sets_a_strict_http_only_cookie_and_out_ends_it(
    client: TestClient, engine: Engine
) -> None:
    secret = make_token(engine, client)
    reply = client.post("/login", data={"token": secret})
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert secret not in reply.headers["set-cookie"]  # the cookie is a session id, not the token
    session = client.cookies["orbit_session"]
    page = client.get("/runs")
    assert page.status_code == 200
    csrf = re.search(r"X-CSRF-Token&#34;: &#34;([^&]+)&#34;", page.text).group(1)  # type: ignore[union-attr]
    out = client.post("/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204 and out.headers["HX-Redirect"] == "/login"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM console_sessions")).scalar_one() == 0
    client.cookies.set("orbit_session", session)  # the old cookie, sent again, proves nothing
    assert client.get("/").status_code == 303


def test_a_sessions_writes_need_its_csrf_token_and_its_own_origin(client: TestClient, engine: Engine) -> None:
    """Without the CSRF header, with another's, or from another origin: 403 and the run untouched."""
    csrf = sign_in(client, make_token(engine, client))
    run_id = pending_run(engine, "test.echo", due_ago=-3600)
    refused = (
        {},
        {"X-CSRF-Token": "guess"},
        {"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
    )
    for headers in refused:
        reply = client.post(f"/console/runs/{run_id}/cancel", headers=headers)
        assert reply.status_code == 403, headers
        assert fetch_run(engine, run_id).status == "pending"
    done = client.post(f"/console/runs/{run_id}/cancel", headers={"X-CSRF-Token": csrf, "Origin": BASE})
    assert done.status_code == 200 and done.headers["HX-Trigger"] == "orbit-changed"
    assert f"Run {run_id} cancelled." in done.text
    assert fetch_run(engine, run_id).status == "cancelled"


def test_a_viewer_sees_but_cannot_act(client: TestClient, engine: Engine) -> None:
    csrf = sign_in(client, make_token(engine, client, "viewer"))
    run_id = pending_run(engine, "test.echo", due_ago=-3600)
    assert client.get(f"/runs/{run_id}").status_code == 200
    reply = client.post(f"/console/runs/{run_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert reply.status_code == 403 and "needs the operator role" in reply.text
    assert fetch_run(engine, run_id).status == "pending"
    paused = client.post(
        "/console/pipelines/pause", data={"pipeline": "test.echo"}, headers={"X-CSRF-Token": csrf}
    )
    assert paused.status_code == 403 and pause_rows(engine) == []


def test_every_page_and_fragment_renders(client: TestClient, engine: Engine) -> None:
    """Open mode on loopback: each page and the fragment it loads answer 200 with HTML."""
    finished_run(engine, "test.echo", "succeeded")
    finished_run(engine, "test.fail", "failed", error="boom")
    run_id = pending_run(engine, "test.typed")
    for path in (
        "/",
        "/console/overview",
        "/runs",
        "/console/runs?status=failed&pipeline=test.*&text=boom",
        f"/runs/{run_id}",
        f"/console/runs/{run_id}",
        "/pipelines",
        "/console/pipelines",
        "/workers",
        "/console/workers",
        "/docs",
    ):
        reply = client.get(path)
        assert reply.status_code == 200, (path, reply.text[:300])
        assert reply.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in reply.headers["content-security-policy"]
    assert "boom" in client.get("/console/runs?status=failed").text


def test_a_run_page_offers_only_the_actions_its_state_allows(client: TestClient, engine: Engine) -> None:
    pending = pending_run(engine, "test.echo")
    failed = finished_run(engine, "test.fail", "failed", error="boom")
    succeeded = finished_run(engine, "test.echo", "succeeded")

    def offered(run_id: int) -> set[str]:
        body = client.get(f"/console/runs/{run_id}").text
        return set(re.findall(rf"/console/runs/{run_id}/(cancel|resume|retry)", body))

    assert offered(pending) == {"cancel"}
    assert offered(failed) == {"resume", "retry"}
    assert offered(succeeded) == {"retry"}


def test_a_missing_run_and_bad_filters_are_one_line_errors(client: TestClient) -> None:
    missing = client.get("/runs/987654")
    assert missing.status_code == 404 and "run 987654 does not exist" in missing.text
    bad = client.get("/console/runs?since=yesterday")
    assert bad.status_code == 400 and "not a date and time" in bad.text
    nul = client.get("/console/runs?text=a%00b")
    assert nul.status_code == 400 and "NUL" in nul.text


def test_hostile_text_is_shown_escaped(client: TestClient, engine: Engine) -> None:
    """Params, errors and results are rendered as text on every view that shows them."""
    with engine.begin() as conn:
        run_id = enqueue("test.echo", {"note": HOSTILE}, connection=conn)
        conn.execute(
            text("UPDATE runs SET status = 'failed', error = :e, finished_at = now() WHERE id = :id"),
            {"e": HOSTILE, "id": run_id},
        )
    for path in (f"/console/runs/{run_id}", "/console/runs", f"/console/runs?text={HOSTILE[:8]}"):
        body = client.get(path).text
        assert "<script>window.__pwned" not in body and "<img src=x" not in body, path
        assert "&lt;script&gt;" in body or "&#34;&lt;script" in body, path


def test_the_trigger_form_enqueues_typed_params_and_refuses_bad_ones(
    client: TestClient, engine: Engine
) -> None:
    done = client.post(
        "/console/trigger", data={"pipeline": "test.typed", "p.customer": "acme", "p.days": "3"}
    )
    assert done.status_code == 200 and "enqueued" in done.text, done.text
    run_id = int(re.search(r"Run (\d+)", done.text).group(1))  # type: ignore[union-attr]
    assert fetch_run(engine, run_id).params == {"customer": "acme", "days": 3, "format": "csv"}
    bad = client.post(
        "/console/trigger", data={"pipeline": "test.typed", "p.customer": "acme", "p.days": "many"}
    )
    assert bad.status_code == 400 and 'role="alert"' in bad.text
    unknown = client.post("/console/trigger", data={"pipeline": "no.such", "params": "{}"})
    assert unknown.status_code == 400 and "no.such" in unknown.text


def test_pausing_and_unpausing_from_the_console(client: TestClient, engine: Engine) -> None:
    paused = client.post("/console/pipelines/pause", data={"pipeline": "test.echo"})
    assert paused.status_code == 200 and paused.headers["HX-Trigger"] == "orbit-pipelines"
    assert pause_rows(engine) == ["test.echo"]
    client.post("/console/pipelines/unpause", data={"pipeline": "test.echo"})
    assert pause_rows(engine) == []


def test_the_change_reader_reports_new_and_finished_runs_once(engine: Engine) -> None:
    """The live views' reader: nothing on its first read, then each change once."""
    changes = Changes(engine)
    assert changes.read_once() == []
    with engine.begin() as conn:
        run_id = enqueue("test.echo", {}, connection=conn)
    events = changes.read_once()
    runs = [data for kind, data in events if kind == "run"]
    assert [(r["id"], r["status"]) for r in runs] == [(run_id, "pending")]
    assert "fleet" in {kind for kind, _ in events}
    assert changes.read_once() == []
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE runs SET status = 'succeeded', started_at = now(), finished_at = now() WHERE id = :id"
            ),
            {"id": run_id},
        )
    runs = [data for kind, data in changes.read_once() if kind == "run"]
    assert [(r["id"], r["status"]) for r in runs] == [(run_id, "succeeded")]
