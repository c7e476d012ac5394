"""Logging, configured once per process with structlog over the standard library.

Console: coloured lines in a terminal, JSON lines otherwise (``LOG_FORMAT`` chooses). Files under
``LOGS_DIR``: ``worker.log`` (every level) and ``worker-error.log`` (errors only), JSON, rotated by
size. Executor processes do not write files: they send their events to their worker, which logs
them, so one process owns the files and rotation is safe.
"""

from __future__ import annotations

import functools
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
        event[key] = "***" if _secret_key(str(key)) and value else _masked(value)
    return event


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.search(key) is not None


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        # Every line of every run passes here: skip the regex when there cannot be a URL.
        return _SECRET_IN_URL.sub(r"\1***@", value) if "://" in value else value
    if isinstance(value, dict):
        return {k: "***" if _secret_key(str(k)) and v else _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


# Every event, from structlog or from the standard library, passes these once; exception text may
# hold a URL too, so masking comes after it is rendered.
_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
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
        json_renderer = renderer if not console else structlog.processors.JSONRenderer()
        for name, min_level in (
            (f"{stem}.log", logging.NOTSET),
            (f"{stem}-error.log", logging.ERROR),
        ):
            file_handler = _RotatingFile(
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
    # None of this is logged, and finding it costs more than the rest of a line (see "Optimization"
    # in the logging documentation).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for noisy in ("sqlalchemy", "alembic", "pgserver", "urllib3"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


def _handler(handler: logging.Handler, renderer: Any) -> logging.Handler:
    handler.setFormatter(_Formatter(renderer))
    return handler


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotation by size, without the two ``stat`` calls the standard handler makes per line
    (they guard against a log path that is not a regular file, and ours are created here)."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            return False
        position = self.stream.tell()
        return bool(position) and position + len(self.format(record)) + 1 >= self.maxBytes


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Renders a record once per renderer: the console and the files share one JSON line.

    A worker logs two lines per run; rendering each once per handler made logging cost more than
    running a short pipeline.
    """

    def __init__(self, renderer: Any) -> None:
        super().__init__(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=_SHARED,
        )
        self._renderer = renderer
        self._key = f"_orbit_rendered_{id(renderer)}"

    def format(self, record: logging.LogRecord) -> str:
        rendered = record.__dict__.get(self._key)
        if rendered is None:
            if isinstance(record.msg, dict) and hasattr(record, "_logger"):
                # From structlog, every processor already applied: only the rendering is left.
                rendered = self._renderer(None, record.levelname.lower(), dict(record.msg))
            else:
                rendered = super().format(record)
            record.__dict__[self._key] = rendered
        return str(rendered)


def configure_child(level: str, sink: Callable[[dict[str, Any]], None]) -> None:
    """In an executor process: hand every event to ``sink`` (the pipe to the worker)."""

    def forward(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        sink(dict(event))
        raise structlog.DropEvent

    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*_SHARED, forward],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


def relay(event: dict[str, Any]) -> None:
    """Log an event that an executor process sent, as if it were logged here."""
    level = str(event.pop("level", "info"))
    message = str(event.pop("event", ""))
    event.pop("timestamp", None)
    structlog.get_logger("orbit.pipeline").log(logging.getLevelName(level.upper()), message, **event)
