"""The ``orbit serve`` application: the JSON API, the console, their errors and security headers."""

from __future__ import annotations

from importlib import resources
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__, registry
from app.access import AccessError
from app.masking import one_line
from app.serve import api, console
from app.serve.state import Server
from app.settings import Settings

log = structlog.get_logger("orbit.serve")

# Scripts, styles and images from this server only, no inline script or style, no framing: params,
# errors and results are rendered escaped, and this stops what escaping might miss.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class _SecurityHeaders:
    """Adds the headers to every response (plain ASGI: Starlette's BaseHTTPMiddleware costs a
    task and a queue per request, and buffers streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings, engine: Engine, known: dict[str, registry.Pipeline]) -> FastAPI:
    """The application over ``engine``; ``known``: the pipelines this process loaded."""
    app = FastAPI(
        title="Orbit",
        version=__version__,
        description="The HTTP API of Orbit, a PostgreSQL-backed pipeline-run queue.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.orbit = Server(settings, engine, known)
    app.add_middleware(_SecurityHeaders)
    static = resources.files("app.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.include_router(api.router)
    app.include_router(console.router)
    _errors(app)
    return app


def _error(request: Request, status: int, message: str, headers: Any = None) -> Response:
    if console.is_console(request.url.path):
        if status == 401 and request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(console.error_fragment(message), status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _errors(app: FastAPI) -> None:
    # Starlette's class, not FastAPI's subclass: FastAPI raises the base class itself for a body it
    # cannot parse (and a 405), which a handler of the subclass never sees.
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = str(exc.detail)
        if isinstance(exc.__cause__, RecursionError):
            message = "the body is nested too deeply to be read as JSON"
        return _error(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if _body_is_not_json(request, exc.errors()):
            return _error(request, 415, "the body must be JSON: send Content-Type: application/json")
        return _error(request, 422, validation_message(exc.errors()))

    @app.exception_handler(AccessError)
    async def access(request: Request, exc: AccessError) -> Response:
        return _error(request, 400, str(exc))

    @app.exception_handler(SQLAlchemyError)
    async def database(request: Request, exc: SQLAlchemyError) -> Response:
        if "NUL (0x00)" in str(exc):  # psycopg refuses it before sending: bad input, nothing written
            return _error(request, 400, "text cannot hold a NUL character")
        log.warning("Database error in a request", path=request.url.path, error=one_line(exc))
        return _error(request, 503, f"database unavailable: {one_line(exc)}"[:300])

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("Request failed", path=request.url.path)
        return _error(request, 500, f"internal error: {type(exc).__name__}")


def _body_is_not_json(request: Request, errors: Any) -> bool:
    """A JSON endpoint called without the JSON content type (``curl -d`` sends a form's): FastAPI
    then reads no body at all, and its own message would blame the fields."""
    if console.is_console(request.url.path) or request.method not in ("POST", "PUT", "PATCH"):
        return False
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind != "application/json" and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)


def validation_message(errors: Any) -> str:
    """The first problem of a request, in one line: where, and what."""
    errors = _one_branch(list(errors))
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if not _tag(part)) or "request"
    more = len(errors) - 1
    also = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
    return f"{where}: {first.get('msg', 'invalid')}{also}"


def _tag(part: Any) -> bool:
    """A location part that names no field: the body itself, or a union's branch (a type name)."""
    return part == "body" or (isinstance(part, str) and (part[:1].isupper() or "[" in part))


def _one_branch(errors: list[Any]) -> list[Any]:
    """A body that may be one object or a list of them fails both ways: keep the problems of the
    branch the body was meant for (an object's fields, or a list's items)."""
    listed = [e for e in errors if any(isinstance(p, str) and "[" in p for p in e.get("loc", ()))]
    single = [e for e in errors if e not in listed]
    if listed and all(len(e.get("loc", ())) <= 2 for e in single):
        return listed  # the body is not an object at all: say what is wrong with it as a list
    return single or errors
