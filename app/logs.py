"""Logging, configured once per process with structlog over the standard library.

Console: coloured lines in a terminal, JSON lines otherwise (``LOG_FORMAT`` chooses). Files under
``LOGS_DIR``: ``worker.log`` (every level) and ``worker-error.log`` (errors only), JSON, rotated by
size. Executor processes do not write files: they send their events to their worker, which logs
them, so one process owns the files and rotation is safe.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

_SECRET_IN_URL = re.compile(r"(\w[\w+.-]*://[^:/@\s]+:)[^@\s]+@")
_SECRET_KEYS = re.compile(r"password|secret|token|api_key", re.IGNORECASE)


def mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace passwords inside URLs (and values of secret-looking keys) with ``***``."""
    for key, value in event.items():
        event[key] = "***" if _SECRET_KEYS.search(str(key)) and value else _masked(value)
    return event


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_IN_URL.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEYS.search(str(k)) and v else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    mask_secrets,
]


def configure(
    level: str = "info",
    fmt: str = "auto",
    logs_dir: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 10,
    stem: str = "worker",
) -> None:
    """Configure logging for this process (console, and files when ``logs_dir`` is given).

    The files are ``<stem>.log`` (every level) and ``<stem>-error.log`` (errors only).
    """
    numeric = logging.getLevelName(level.upper())
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True) if console else structlog.processors.JSONRenderer()
    )
    handlers: list[logging.Handler] = [_handler(logging.StreamHandler(sys.stderr), renderer)]
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        json_renderer = structlog.processors.JSONRenderer()
        for name, min_level in (
            (f"{stem}.log", logging.NOTSET),
            (f"{stem}-error.log", logging.ERROR),
        ):
            file_handler = logging.handlers.RotatingFileHandler(
                logs_dir / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            file_handler.setLevel(min_level)
            handlers.append(_handler(file_handler, json_renderer))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("sqlalchemy", "alembic", "pgserver", "urllib3"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            mask_secrets,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


def _handler(handler: logging.Handler, renderer: Any) -> logging.Handler:
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Records from the standard library carry exc_info; its text may hold a URL too.
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                mask_secrets,
                renderer,
            ],
            foreign_pre_chain=_SHARED,
        )
    )
    return handler


def configure_child(level: str, sink: Callable[[dict[str, Any]], None]) -> None:
    """In an executor process: hand every event to ``sink`` (the pipe to the worker)."""

    def forward(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        sink(dict(event))
        raise structlog.DropEvent

    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, mask_secrets, forward],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


def relay(event: dict[str, Any]) -> None:
    """Log an event that an executor process sent, as if it were logged here."""
    level = str(event.pop("level", "info"))
    message = str(event.pop("event", ""))
    event.pop("timestamp", None)
    structlog.get_logger("orbit.pipeline").log(logging.getLevelName(level.upper()), message, **event)
