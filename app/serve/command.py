"""``orbit serve``: start the API and console with uvicorn; stops gracefully on SIGTERM or Ctrl-C.

Without any API token it serves without authentication, on a loopback address only, and says so;
asked for another address without tokens, it refuses (exit 2) before listening.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from app import logs, queries
from app.database import DatabaseError, connect
from app.registry import RegistryError, discover
from app.settings import Settings, load_settings_or_exit

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger("orbit.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (SERVE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (SERVE_PORT, default 8080; 0: any free port)")


def start(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("SERVE_HOST", args.host), ("SERVE_PORT", args.port)) if v is not None}
    settings = load_settings_or_exit(**overrides)
    logs.configure(
        settings.LOG_LEVEL,
        settings.LOG_FORMAT,
        settings.LOGS_DIR,
        settings.LOG_MAX_BYTES,
        settings.LOG_BACKUPS,
        "serve",
    )
    try:
        return serve(settings)
    except (RegistryError, UsageError) as exc:
        print(f"orbit: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(f"orbit: {exc}", file=sys.stderr)
        return 1


class UsageError(Exception):
    """The server cannot start as asked; one line, exit 2."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(settings: Settings) -> int:
    import uvicorn

    from app.serve.app import create_app

    known = discover(settings.pipeline_modules)
    database = connect(settings)
    engine = database.engine(pool_size=8)
    with engine.connect() as conn:
        open_mode = not queries.any_token(conn)
    host, port = settings.SERVE_HOST, settings.SERVE_PORT
    if open_mode and not is_loopback(host):
        raise UsageError(
            f"no API token exists, so orbit serve would answer anyone on {host}: create one with "
            "`orbit token create NAME --role admin`, or serve on 127.0.0.1"
        )
    if open_mode:
        log.warning("No API token exists: serving without authentication, on a loopback address only")
    app = create_app(settings, engine, known)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = _server(config)
    _announce(server, host, open_mode)
    try:
        server.run()
    finally:
        app.state.orbit.close()
        engine.dispose()
    return 0


def _server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises the stopping signal once its graceful shutdown is done, so the process
        would end as killed by SIGTERM and supervisord would log it so; a stop that finished is
        exit 0, as the worker's is."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def _announce(server: uvicorn.Server, host: str, open_mode: bool) -> None:
    """Print the console's URL once the socket is bound (port 0 is resolved by then)."""
    startup = server.startup

    async def announced(sockets: list[socket.socket] | None = None) -> None:
        await startup(sockets=sockets)
        for listener in server.servers:
            for sock in listener.sockets:
                port = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                mode = " (no token exists: open on loopback)" if open_mode else ""
                print(f"Orbit console: http://{shown}:{port}/{mode}", flush=True)
                log.info("Serving the API and console", url=f"http://{shown}:{port}/", open=open_mode)
                return

    server.startup = announced  # type: ignore[method-assign]
