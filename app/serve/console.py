"""The console: server-rendered pages (Jinja2, escaped), kept live by htmx fragments that reload
when the server-sent events say something changed. Every action goes through app.serve.actions,
as the API's do, with the caller's role checked the same way."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import escape
from starlette.concurrency import run_in_threadpool

from app import access, health, queries
from app.access import SESSION_HOURS, Role
from app.queries import RunFilter
from app.serve import actions, forms, views
from app.serve.auth import SESSION_COOKIE, Caller
from app.serve.state import audit, caller, server
from app.states import RunStatus

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(resources.files("app.serve") / "templates"))
# Params and results as the user wrote them: Jinja's tojson escapes <, > and & as \u003c and so on
# (for script blocks); these go into <pre> and <textarea>, where autoescaping is what keeps them inert.
templates.env.filters["pretty"] = lambda value: json.dumps(
    value, indent=2, sort_keys=True, ensure_ascii=False
)
PAGES = frozenset({"/", "/runs", "/pipelines", "/workers", "/docs"})


def is_console(path: str) -> bool:
    """A path the console answers with HTML (a page, a run's page or a fragment), errors included."""
    return path in PAGES or path.startswith(("/runs/", "/console/"))


Viewer = Annotated[Caller, Depends(caller(Role.VIEWER, "the console"))]


Operator = Annotated[Caller, Depends(caller(Role.OPERATOR, "changing runs and pipelines"))]


def error_fragment(message: str) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>'


def _notice(message: str, event: str = "orbit-changed") -> HTMLResponse:
    """An action's answer: a line in the notice area, and an event that refreshes the views."""
    body = f'<p class="notice" role="status">{escape(message)}</p>'
    return HTMLResponse(body, headers={"HX-Trigger": event})


def _page(request: Request, name: str, who: Caller, **context: Any) -> HTMLResponse:
    headers = {"X-CSRF-Token": who.csrf} if who.csrf else {}
    context.update(who=who, page=name, hx_headers=json.dumps(headers), statuses=[str(s) for s in RunStatus])
    return templates.TemplateResponse(request, f"{name}.html", context)


def _fragment(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, f"_{name}.html", context)


# --- signing in -----------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": None, "page": "login"})


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=200)]) -> Response:
    """Trade a token for a session cookie (HttpOnly, SameSite=Strict) standing for it."""
    orbit = server(request)
    with orbit.begin() as conn:
        row = queries.token_by_hash(conn, access.digest(token.strip()))
        if row is None:
            context = {"error": "That token is not valid (revoked, or never created).", "page": "login"}
            return templates.TemplateResponse(request, "login.html", context, status_code=401)
        session_id = secrets.token_urlsafe(32)
        queries.create_session(
            conn, access.digest(session_id), row.name, secrets.token_urlsafe(24), SESSION_HOURS
        )
    audit(Caller(row.name, Role.parse(row.role), "session"), "sign in")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request, _: Viewer) -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        with server(request).begin() as conn:
            queries.end_session(conn, access.digest(session_id))
        server(request).auth.forget()
    response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    response.delete_cookie(SESSION_COOKIE)
    return response


# --- pages ----------------------------------------------------------------------------------------


@router.get("/")
def overview_page(request: Request, who: Viewer) -> Response:
    return _page(request, "overview", who)


@router.get("/console/overview")
def overview(request: Request, _: Viewer) -> Response:
    orbit = server(request)
    with orbit.read() as conn:
        data = views.overview(conn, orbit.settings)
    fleet = health.check(orbit.engine, orbit.settings)
    return _fragment(request, "overview", data=data, health=fleet, chart=forms.chart_bars(data["chart"]))


def _filter_args(request: Request) -> dict[str, str]:
    keys = ("status", "pipeline", "text", "since", "until")
    return {k: request.query_params[k] for k in keys if request.query_params.get(k)}


def _where(args: dict[str, str]) -> RunFilter:
    status = RunStatus(args["status"]) if args.get("status") in set(RunStatus) else None
    since, until = (_time(args.get(k)) for k in ("since", "until"))
    return views.run_filter(status, args.get("pipeline"), args.get("text"), since, until)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"not a date and time: {value!r:.40} (2026-12-04T10:00)") from None


@router.get("/runs")
def runs_page(request: Request, who: Viewer) -> Response:
    return _page(request, "runs", who, args=_filter_args(request))


@router.get("/console/runs")
def runs(request: Request, _: Viewer) -> Response:
    args = _filter_args(request)
    before = request.query_params.get("before")
    with server(request).read() as conn:
        page = views.runs_page(conn, _where(args), int(before) if before and before.isdigit() else None, 50)
    return _fragment(request, "runs", page=page, args=args)


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: int, who: Viewer) -> Response:
    with server(request).read() as conn:
        run = views.run_detail(conn, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return _page(request, "run", who, run=run, run_id=run_id)


@router.get("/console/runs/{run_id}")
def run(request: Request, run_id: int, _: Viewer) -> Response:
    with server(request).read() as conn:
        detail = views.run_detail(conn, run_id)
    if detail is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return _fragment(
        request, "run", run=detail, timeline=forms.timeline(detail), actions=actions.allowed(detail["status"])
    )


@router.get("/pipelines")
def pipelines_page(request: Request, who: Viewer) -> Response:
    return _page(request, "pipelines", who)


@router.get("/console/pipelines")
def pipelines(request: Request, _: Viewer) -> Response:
    orbit = server(request)
    with orbit.read() as conn:
        listed = views.pipelines(conn, orbit.known)
    for item in listed:
        item["fields"] = forms.fields(item.get("params_schema"))
    return _fragment(request, "pipelines", pipelines=listed)


@router.get("/workers")
def workers_page(request: Request, who: Viewer) -> Response:
    return _page(request, "workers", who)


@router.get("/console/workers")
def workers(request: Request, _: Viewer) -> Response:
    with server(request).read() as conn:
        listed = views.workers(conn)
    return _fragment(request, "workers", workers=listed)


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/docs")
def docs(request: Request) -> Response:
    return templates.TemplateResponse(request, "docs.html", {"page": "docs"})


# --- actions --------------------------------------------------------------------------------------


def _acting(action: str, do: Any) -> Response:
    try:
        return _notice(
            do(), "orbit-pipelines" if action in ("pause", "unpause", "drain") else "orbit-changed"
        )
    except actions.ActionError as exc:
        return HTMLResponse(error_fragment(str(exc)), status_code=exc.status)


@router.post("/console/runs/{run_id}/{action}")
def run_action(
    request: Request,
    who: Operator,
    run_id: int,
    action: str,
    params: Annotated[str | None, Form(max_length=1_100_000)] = None,
) -> Response:
    """cancel, resume, retry; retry with ``params`` (JSON) is "run again with these params"."""
    orbit = server(request)

    def do() -> str:
        with orbit.begin() as conn:
            if action == "cancel":
                actions.cancel(conn, run_id)
                audit(who, "cancel", run_id=run_id)
                return f"Run {run_id} cancelled."
            if action == "resume":
                actions.resume(conn, run_id, orbit.settings.stale_after)
                audit(who, "resume", run_id=run_id)
                return f"Run {run_id} is pending again, from its last completed step."
            if action == "retry":
                new_id = actions.retry(conn, run_id, None if params is None else forms.json_object(params))
                audit(who, "retry", run_id=run_id, new_id=new_id, edited=params is not None)
                return f"Run {new_id} enqueued: run {run_id} again."
        raise actions.ActionError(f"unknown action {action!r:.30}", 404)

    return _acting(action, do)


@router.post("/console/bulk")
def bulk(
    request: Request,
    who: Operator,
    action: Annotated[str, Form()],
    scope: Annotated[str, Form()] = "selected",
    ids: Annotated[list[int] | None, Form()] = None,
) -> Response:
    """Cancel or run again the selected runs, or every run the list's filter matches."""
    orbit = server(request)
    admin = who.role >= Role.ADMIN
    where = _where(_filter_args(request))

    def do() -> str:
        with orbit.begin() as conn:
            if scope == "matching":
                done: Any = (
                    actions.bulk_cancel(conn, where, admin=admin)
                    if action == "cancel"
                    else actions.bulk_retry(conn, where, admin=admin)
                )
            else:
                chosen = sorted(set(ids or []))
                if not chosen:
                    raise actions.ActionError("select runs first")
                if len(chosen) > access.BULK_LIMIT and not admin:
                    raise actions.ActionError(f"more than {access.BULK_LIMIT} runs need the admin role", 403)
                done = (
                    queries.cancel_many(conn, chosen)
                    if action == "cancel"
                    else [actions.retry(conn, run_id) for run_id in chosen]
                )
        audit(who, f"bulk {action}", scope=scope, runs=len(done))
        verb = "cancelled" if action == "cancel" else "enqueued again"
        return f"{len(done)} run(s) {verb}."

    if action not in ("cancel", "retry"):
        return HTMLResponse(error_fragment(f"unknown action {action!r:.30}"), status_code=400)
    return _acting(action, do)


@router.post("/console/pipelines/{action}")
def pipeline_action(
    request: Request,
    who: Operator,
    action: str,
    pipeline: Annotated[str, Form(max_length=200)],
) -> Response:
    orbit = server(request)

    def do() -> str:
        with orbit.begin() as conn:
            if action == "pause":
                actions.pause(conn, pipeline, set(orbit.known), f"token:{who.name}")
                message = f"{pipeline}: paused; workers stop claiming its runs within one poll."
            elif action == "unpause":
                removed = actions.unpause(conn, pipeline)
                message = f"{pipeline}: unpaused." if removed else f"{pipeline}: was not paused."
            elif action == "drain":
                actions.pause(conn, pipeline, set(orbit.known), f"token:{who.name}")
                running = actions.running(conn, pipeline)
                message = f"{pipeline}: paused; {len(running)} run(s) still running."
            else:
                raise actions.ActionError(f"unknown action {action!r:.30}", 404)
        audit(who, action, pipeline=pipeline)
        return message

    return _acting(action, do)


@router.post("/console/trigger")
async def trigger(request: Request, who: Operator) -> Response:
    """Enqueue a run from the pipeline's form: fields from its params model, or a JSON editor."""
    form = await request.form()
    orbit = server(request)
    name = str(form.get("pipeline", ""))
    known = orbit.known.get(name)
    try:
        params = forms.params_from(form, None if known is None else known.params_schema())
        ask = actions.Enqueue(name, params, priority=forms.whole(form.get("priority"), "priority"))
    except forms.FormError as exc:
        return HTMLResponse(error_fragment(str(exc)), status_code=400)

    def do() -> str:
        with orbit.begin() as conn:
            run_id = actions.enqueue(conn, [ask])[0][0]
        audit(who, "enqueue", pipelines=[name], runs=1, first=run_id)
        return f"Run {run_id} of {name} enqueued."

    return await run_in_threadpool(_acting, "trigger", do)
