"""The JSON API: seed 001's ``/queue/*``, seed 003's health and metrics, and the runs, pipelines
and tokens of the console. Errors are ``{"error": "one line"}`` with a 4xx, and nothing written.

Over 400 lines on purpose: each route is short, and the whole surface of the API reads in one
place."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app import access, health, operations
from app.access import Role
from app.durations import parse_duration
from app.limits import MAX_CAP, LimitError, limits
from app.queries import RunFilter
from app.serve import actions, fleet_metrics, views
from app.serve.auth import Caller
from app.serve.state import Server, audit, caller, server
from app.states import RunStatus

router = APIRouter()

Viewer = Annotated[Caller, Depends(caller(Role.VIEWER, "reading"))]
Operator = Annotated[Caller, Depends(caller(Role.OPERATOR, "changing runs and pipelines"))]
RunId = Annotated[int, Field(ge=1, le=2**63 - 1)]
ANY_JSON: dict[str, Any] = {}


class EnqueueRequest(BaseModel):
    """One run: its pipeline and params, and optionally when, how urgent, how often, how long."""

    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-(2**31) + 1, le=2**31 - 1)
    delay: float | str | None = Field(default=None, description="seconds, or a duration such as 5m")
    run_at: datetime | None = None
    key: str | None = Field(default=None, description="idempotency key: a live run with it is reused")
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | str | None = Field(default=None, description="time limit: seconds or 10m")
    group: str | None = Field(
        default=None, min_length=1, max_length=200, description="the run's group, for group_concurrency"
    )

    def ask(self) -> actions.Enqueue:
        return actions.Enqueue(**self.model_dump())


class Glob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(min_length=1, max_length=200, description="a pipeline name or glob (* and ?)")


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] | None = Field(default=None, description="new params; default: the run's")


class Filter(BaseModel):
    """Which runs a bulk action takes: the filters of GET /api/runs."""

    model_config = ConfigDict(extra="forbid")
    status: RunStatus | None = None
    pipeline: str | None = None
    text: str | None = Field(default=None, max_length=200)
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> RunFilter:
        return views.run_filter(self.status, self.pipeline, self.text, self.since, self.until)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    role: str = "viewer"


def _window(since: str) -> timedelta:
    try:
        window = parse_duration(since, bare_unit="s")
    except ValueError as exc:
        raise HTTPException(400, f"since {since!r:.40}: expected {exc}") from None
    if not timedelta(0) < window <= timedelta(days=366):
        raise HTTPException(400, f"since {since!r:.40}: must be more than zero and at most a year")
    return window


def _action(exc: actions.ActionError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


# --- seed 001: the queue --------------------------------------------------------------------------


@router.post("/queue/enqueue", status_code=201, tags=["queue"])
async def enqueue(
    request: Request,
    body: Annotated[EnqueueRequest | list[EnqueueRequest], Body()],
    who: Annotated[Caller, Depends(caller(Role.OPERATOR, "enqueueing"))],
) -> Any:
    """Enqueue a run (201 ``{"id"}``; 200 when a live run holds its key), or a list of runs in
    one transaction (201 ``{"ids"}``)."""
    batch = isinstance(body, list)
    asks = [item.ask() for item in (body if isinstance(body, list) else [body])]
    if batch and not asks:
        raise HTTPException(400, "the list of runs is empty")
    if len(asks) > 100_000:
        raise HTTPException(413, "at most 100,000 runs per request")
    orbit = server(request)
    try:
        if batch:  # validating thousands of runs would hold up the event loop: a thread does it
            ids, inserted = await run_in_threadpool(_enqueue_batch, orbit, asks)
        else:  # the common case, written with the runs of other requests (app.serve.inserter)
            run_id, inserted = await orbit.inserter.insert(actions.prepare(asks)[0])
            ids = [run_id]
    except actions.ActionError as exc:
        raise _action(exc) from None
    audit(who, "enqueue", pipelines=sorted({a.pipeline for a in asks}), runs=len(ids), first=ids[0])
    if batch:
        return {"ids": ids}
    return JSONResponse({"id": ids[0]}, status_code=201 if inserted else 200)


def _enqueue_batch(orbit: Server, asks: list[actions.Enqueue]) -> tuple[list[int], bool]:
    with orbit.begin() as conn:
        return actions.enqueue(conn, asks)


@router.get("/queue/status/{run_id}", tags=["queue"])
def status(request: Request, run_id: RunId, _: Viewer) -> Any:
    """The run with its params, result, attempts' errors and steps."""
    with server(request).read() as conn:
        run = views.run_detail(conn, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return run


@router.get("/queue/stats", tags=["queue"])
def stats(request: Request, _: Viewer, since: str = "1h") -> Any:
    """Runs by status and by pipeline (live now; finished within ``since``) and the fleet report."""
    with server(request).read() as conn:
        return views.stats(conn, _window(since))


@router.get("/queue/workers", tags=["queue"])
def workers(request: Request, _: Viewer) -> Any:
    """Registered workers with their heartbeat age and the runs they are running."""
    with server(request).read() as conn:
        return {"workers": views.workers(conn)}


@router.post("/queue/flush", tags=["queue"])
def flush(
    request: Request, body: Glob, who: Annotated[Caller, Depends(caller(Role.ADMIN, "flushing"))]
) -> Any:
    """Cancel every pending run of the pipelines matching the glob."""
    with server(request).begin() as conn:
        try:
            cancelled = actions.flush(conn, body.pipeline)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "flush", pipeline=body.pipeline, cancelled=cancelled)
    return {"cancelled": cancelled}


# --- seed 003: health and metrics -----------------------------------------------------------------


@router.get("/api/health", tags=["fleet"])
def api_health(request: Request) -> Any:
    """The fleet's health (no token needed, for load balancers): 503 on error."""
    orbit = server(request)
    result = health.check(orbit.engine, orbit.settings)
    return JSONResponse(result.as_json(), status_code=503 if result.status is health.Status.ERROR else 200)


@router.get("/api/metrics", tags=["fleet"])
def api_metrics(request: Request, _: Viewer, since: str = "1h") -> Any:
    """The fleet's metrics report over ``since``."""
    with server(request).read() as conn:
        return views.fleet_report(conn, _window(since))


@router.get("/metrics", tags=["fleet"], response_class=PlainTextResponse)
def metrics(request: Request, _: Viewer) -> Any:
    """Prometheus text of the whole fleet."""
    orbit = server(request)
    with orbit.read() as conn:
        body, content_type = fleet_metrics.render(conn, orbit.settings)
    return PlainTextResponse(body, media_type=content_type)


@router.get("/api/events", tags=["fleet"])
def events(request: Request, _: Viewer) -> StreamingResponse:
    """Server-sent events: ``run`` (a run enqueued, started or finished) and ``fleet``."""
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    stream = server(request).events.listen()
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


# --- runs -----------------------------------------------------------------------------------------


@router.get("/api/runs", tags=["runs"])
def runs(
    request: Request,
    _: Viewer,
    status: RunStatus | None = None,
    pipeline: Annotated[str | None, Query(max_length=200)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=views.MAX_PAGE)] = views.DEFAULT_PAGE,
) -> Any:
    """Runs, newest first; ``next_before`` is the cursor of the next page (null on the last)."""
    where = views.run_filter(status, pipeline, text, since, until)
    with server(request).read() as conn:
        page = views.runs_page(conn, where, before, limit)
    return {"runs": page.runs, "next_before": page.next_before}


@router.post("/api/runs/{run_id}/cancel", tags=["runs"])
def cancel(request: Request, run_id: RunId, who: Operator) -> Any:
    with server(request).begin() as conn:
        try:
            previous = actions.cancel(conn, run_id)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "cancel", run_id=run_id, previous=previous)
    return {"id": run_id, "status": str(RunStatus.CANCELLED), "previous": previous}


@router.post("/api/runs/{run_id}/resume", tags=["runs"])
def resume(request: Request, run_id: RunId, who: Operator) -> Any:
    """Back to pending, from its last completed step (interrupted, failed or timed-out runs)."""
    orbit = server(request)
    with orbit.begin() as conn:
        try:
            row = actions.resume(conn, run_id, orbit.settings.stale_after)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "resume", run_id=run_id)
    return {"id": row.id, "status": row.status}


@router.post("/api/runs/{run_id}/retry", status_code=201, tags=["runs"])
def retry(
    request: Request,
    who: Operator,
    run_id: RunId,
    body: Annotated[RetryRequest | None, Body()] = None,
) -> Any:
    """A new run of a finished run's pipeline, from the start: with its params, or new ones."""
    params = None if body is None else body.params
    with server(request).begin() as conn:
        try:
            new_id = actions.retry(conn, run_id, params)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "retry", run_id=run_id, new_id=new_id, edited=params is not None)
    return {"id": new_id, "retry_of": run_id}


@router.post("/api/runs/cancel", tags=["runs"])
def bulk_cancel(request: Request, body: Filter, who: Operator) -> Any:
    """Cancel every pending or running run the filter matches (over 1,000: admin)."""
    with server(request).begin() as conn:
        try:
            ids = actions.bulk_cancel(conn, body.where(), admin=who.role >= Role.ADMIN)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "bulk cancel", filter=body.model_dump(exclude_none=True, mode="json"), runs=len(ids))
    return {"cancelled": ids}


@router.post("/api/runs/retry", tags=["runs"])
def bulk_retry(request: Request, body: Filter, who: Operator) -> Any:
    """Run again every failed or timed-out run the filter matches (over 1,000: admin)."""
    with server(request).begin() as conn:
        try:
            pairs = actions.bulk_retry(conn, body.where(), admin=who.role >= Role.ADMIN)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "bulk retry", filter=body.model_dump(exclude_none=True, mode="json"), runs=len(pairs))
    return {"retried": [{"id": new, "retry_of": old} for old, new in pairs.items()]}


# --- pipelines ------------------------------------------------------------------------------------


@router.get("/api/pipelines", tags=["pipelines"])
def pipelines(request: Request, _: Viewer) -> Any:
    """The pipelines this server loads or a worker runs: settings, schedule, pauses, live runs."""
    orbit = server(request)
    with orbit.read() as conn:
        return {"pipelines": views.pipelines(conn, orbit.known)}


class LimitRequest(BaseModel):
    """An override of the limits of the pipelines matching ``pattern`` (the fields given)."""

    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(min_length=1, max_length=200, description="a pipeline name or glob (* and ?)")
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CAP, description="running at once, fleet-wide")
    rate: str | None = Field(
        default=None, max_length=40, description="started per window: 100/m, 5/s, 1000/h"
    )
    group_concurrency: int | None = Field(
        default=None, ge=1, le=MAX_CAP, description="running at once per group"
    )


@router.get("/api/limits", tags=["pipelines"])
def list_limits(request: Request, _: Viewer) -> Any:
    """The limited pipelines with each limit and where it comes from, and the overrides."""
    orbit = server(request)
    with orbit.read() as conn:
        return operations.limits_in_force(conn, {name: p.limits for name, p in orbit.known.items()})


@router.put("/api/limits", tags=["pipelines"])
def set_limit(request: Request, body: LimitRequest, who: Operator) -> Any:
    """Override limits (fleet-wide, from every worker's next claim); fields left out are kept."""
    try:
        flow = limits(body.concurrency, body.rate, body.group_concurrency)
    except LimitError as exc:
        raise HTTPException(400, str(exc)) from None
    orbit = server(request)
    with orbit.begin() as conn:
        try:
            operations.set_limit(conn, body.pattern, flow, set(orbit.known), f"token:{who.name}")
        except operations.OperationError as exc:
            raise HTTPException(400, str(exc)) from None
    audit(who, "limit", pattern=body.pattern, **flow.as_claim())
    return {"pattern": body.pattern, "limits": operations.describe(flow.as_claim())}


@router.delete("/api/limits", tags=["pipelines"])
def clear_limit(
    request: Request, pattern: Annotated[str, Query(min_length=1, max_length=200)], who: Operator
) -> Any:
    """Remove the override ``pattern``: the code's limits apply again."""
    with server(request).begin() as conn:
        try:
            removed = operations.clear_limit(conn, pattern)
        except operations.OperationError as exc:
            raise HTTPException(400, str(exc)) from None
    audit(who, "clear limit", pattern=pattern, removed=removed)
    return {"pattern": pattern, "removed": removed}


@router.post("/api/pipelines/pause", tags=["pipelines"])
def pause(request: Request, body: Glob, who: Operator) -> Any:
    orbit = server(request)
    with orbit.begin() as conn:
        try:
            added = actions.pause(conn, body.pipeline, set(orbit.known), f"token:{who.name}")
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "pause", pipeline=body.pipeline, added=added)
    return {"pipeline": body.pipeline, "paused": True, "already": not added}


@router.post("/api/pipelines/unpause", tags=["pipelines"])
def unpause(request: Request, body: Glob, who: Operator) -> Any:
    with server(request).begin() as conn:
        try:
            removed = actions.unpause(conn, body.pipeline)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "unpause", pipeline=body.pipeline, removed=removed)
    return {"pipeline": body.pipeline, "paused": False, "was_paused": removed}


@router.post("/api/pipelines/drain", tags=["pipelines"])
def drain(request: Request, body: Glob, who: Operator) -> Any:
    """Pause the glob and say what still runs; call again (or watch) until ``running`` is empty."""
    orbit = server(request)
    with orbit.begin() as conn:
        try:
            actions.pause(conn, body.pipeline, set(orbit.known), f"token:{who.name}")
            running = actions.running(conn, body.pipeline)
        except actions.ActionError as exc:
            raise _action(exc) from None
    audit(who, "drain", pipeline=body.pipeline, running=len(running))
    return {"pipeline": body.pipeline, "paused": True, "drained": not running, "running": running}


# --- tokens ---------------------------------------------------------------------------------------

Admin = Annotated[Caller, Depends(caller(Role.ADMIN, "managing tokens"))]


@router.get("/api/tokens", tags=["tokens"])
def list_tokens(request: Request, _: Admin) -> Any:
    with server(request).read() as conn:
        return {"tokens": access.listed(conn)}


@router.post("/api/tokens", status_code=201, tags=["tokens"])
def create_token(request: Request, body: TokenRequest, who: Admin) -> Any:
    """Create a token; its secret is in this answer only."""
    orbit = server(request)
    with orbit.begin() as conn:
        secret = access.create(conn, body.name, body.role, f"token:{who.name}")
    orbit.auth.forget()
    audit(who, "token create", name=body.name, role=body.role)
    return {"name": body.name, "role": body.role, "secret": secret}


@router.delete("/api/tokens/{name}", tags=["tokens"])
def revoke_token(request: Request, name: str, who: Admin) -> Any:
    orbit = server(request)
    with orbit.begin() as conn:
        access.revoke(conn, name)
    orbit.auth.forget()
    audit(who, "token revoke", name=name)
    return {"name": name, "revoked": True}
