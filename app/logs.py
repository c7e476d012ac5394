"""Logging, configured once per process: structlog for Orbit's own events, the standard library's
root handlers for everyone's (libraries' records go through them too, so lines share one order).

Console: coloured lines in a terminal, JSON lines otherwise (``LOG_FORMAT`` chooses). Files under
``LOGS_DIR``: ``worker.log`` (every level) and ``worker-error.log`` (errors only), JSON, rotated by
size. Executor processes do not write files: they send their events to their worker, which logs
them, so one process owns the files and rotation is safe.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from app.masking import mask_url

_SECRET_KEYS = re.compile(r"password|secret|token|api_key", re.IGNORECASE)


def mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace passwords inside URLs (and values of secret-looking keys) with ``***``."""
    for key, value in event.items():
        if _secret_key(str(key)) and value:
            event[key] = "***"
        elif value.__class__ not in _SCALARS:  # every line of every run passes here: numbers skip
            event[key] = _masked(value)
    return event


_SCALARS = frozenset({int, float, bool, type(None)})


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.search(key) is not None


def _masked(value: Any, within: tuple[int, ...] = ()) -> Any:
    """``value`` with secrets masked; ``within``: the containers it is inside (a cycle ends as ...)."""
    if isinstance(value, str):
        # Skip the regexes when there cannot be a URL or a DSN's password.
        return mask_url(value) if "://" in value or "password" in value else value
    if not isinstance(value, dict | list | tuple):
        return value
    if id(value) in within:
        return "..."
    within = (*within, id(value))
    if isinstance(value, dict):
        return {k: "***" if _secret_key(str(k)) and v else _masked(v, within) for k, v in value.items()}
    return [_masked(v, within) for v in value]


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
    renderer: Any = structlog.dev.ConsoleRenderer(colors=True) if console else _json_renderer()
    outputs: list[tuple[logging.Handler, Any]] = [(logging.StreamHandler(sys.stderr), renderer)]
    if logs_dir is not None:
        json_renderer = renderer if not console else _json_renderer()
        outputs += [(handler, json_renderer) for handler in _files(logs_dir, stem, max_bytes, backups)]
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler, handler_renderer in outputs:
        handler.setFormatter(_Formatter(handler_renderer))
        root.addHandler(handler)
    root.setLevel(numeric)
    # None of this is logged, and finding it costs more than the rest of a line (see "Optimization"
    # in the logging documentation).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for noisy in ("sqlalchemy", "alembic", "pgserver", "urllib3"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    run_lines.configure(None if console else [handler for handler, _ in outputs], numeric)
    structlog.configure(
        processors=[*_SHARED, _as_argument],
        logger_factory=functools.partial(_Lines, outputs),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )


def _files(logs_dir: Path, stem: str, max_bytes: int, backups: int) -> list[logging.Handler]:
    """``<stem>.log`` (every level) and ``<stem>-error.log`` (errors only), rotated by size."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = []
    for name, min_level in ((f"{stem}.log", logging.NOTSET), (f"{stem}-error.log", logging.ERROR)):
        handler = _RotatingFile(logs_dir / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        handler.setLevel(min_level)
        handlers.append(handler)
    return handlers


def _json_renderer() -> structlog.processors.JSONRenderer:
    return structlog.processors.JSONRenderer(serializer=_to_json)


# JSONRenderer's json.dumps(default=...) builds a new C encoder per line, which costs more than
# encoding a run's line; this one is built once (same output: ASCII, default separators).
_C_ENCODE = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, repr, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def _to_json(event: Any, **_: Any) -> str:
    try:
        if _C_ENCODE is not None:
            return "".join(_C_ENCODE(event, 0))
        return json.dumps(event, default=repr)
    except (RecursionError, TypeError, ValueError):  # a cycle, a key that is not text: still a line
        return json.dumps({str(key): _plain(value) for key, value in event.items()})


def _plain(value: Any) -> Any:
    return value if value.__class__ in _SCALARS or isinstance(value, str) else repr(value)


def _as_argument(_: Any, __: str, event: MutableMapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (event,), {}


class _Lines:
    """structlog's logger: renders an event once per format and writes it straight to the streams
    of the root logger's handlers, under their locks.

    Libraries' records (SQLAlchemy, Alembic) still go through those handlers, so both kinds of
    line share the files, their order and their rotation. A worker logs two lines per run: through
    a stdlib ``LogRecord`` and each handler a line cost 52-57 µs of CPU (console and file, 2-core
    machine), this way 26-32 µs.
    """

    def __init__(self, outputs: list[tuple[logging.Handler, Any]], *_: Any) -> None:
        self._outputs = outputs

    def _write(self, level: int, name: str, event: MutableMapping[str, Any]) -> None:
        run_lines.flush()  # lines about runs written before come first
        rendered: dict[int, str] = {}
        for handler, renderer in self._outputs:
            if level < handler.level:
                continue
            line = rendered.get(id(renderer))
            if line is None:
                # The console renderer takes keys out of the event: each renderer gets a copy.
                line = rendered[id(renderer)] = str(renderer(None, name, dict(event)))
            _write_line(handler, line)

    def debug(self, event: MutableMapping[str, Any]) -> None:
        self._write(logging.DEBUG, "debug", event)

    def info(self, event: MutableMapping[str, Any]) -> None:
        self._write(logging.INFO, "info", event)

    def warning(self, event: MutableMapping[str, Any]) -> None:
        self._write(logging.WARNING, "warning", event)

    def error(self, event: MutableMapping[str, Any]) -> None:
        self._write(logging.ERROR, "error", event)

    def critical(self, event: MutableMapping[str, Any]) -> None:
        self._write(logging.CRITICAL, "critical", event)

    warn = msg = info
    exception = error
    fatal = critical


def _write_line(handler: logging.Handler, line: str) -> None:
    """What ``handler.emit`` does with a formatted record, without building the record."""
    stream = getattr(handler, "stream", None)
    handler.acquire()
    try:
        if isinstance(handler, _RotatingFile):
            stream = handler.roll_for(len(line) + 1)
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()
    except Exception:
        handler.handleError(logging.makeLogRecord({"msg": line}))
    finally:
        handler.release()


class RunLines:
    """The lines a worker writes about each run ("Run started", "Run succeeded"), thousands a
    second: rendered here, as the JSON renderer would render them (same keys, same order, same
    text), and written in one piece per stream when the worker's loop is about to wait, or before
    any other line. Through structlog a line cost 26-32 µs of CPU; this way about 3 µs.

    Only for JSON output: on a terminal (coloured lines), or before ``configure``, ``line``
    returns False and the caller logs through structlog.
    """

    MAX_WAITING = 512  # lines held at most before they are written anyway

    def __init__(self) -> None:
        self._handlers: list[logging.Handler] | None = None
        self._level = logging.INFO
        self._waiting: list[str] = []
        self._lock = threading.Lock()
        self._second = -1
        self._stamp = ""
        self._quoted: dict[str, str] = {}

    def configure(self, handlers: list[logging.Handler] | None, level: int) -> None:
        self.flush()
        self._handlers, self._level = handlers, level

    def info(self, fields: str, event: str) -> bool:
        """Write ``{fields, "event": event, "level": "info", "timestamp": ...}`` at level info
        (``fields``: the rendered ``"key": value`` pairs); False when this path cannot (see the
        class)."""
        if self._handlers is None:
            return False
        if self._level > logging.INFO:
            return True
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = min(999_999, int((now - second) * 1e6))
        stamp = f"{self._stamp}.{micros:06d}Z"
        line = f'{{{fields}, "event": {self.quote(event)}, "level": "info", "timestamp": "{stamp}"}}'
        with self._lock:
            self._waiting.append(line)
            full = len(self._waiting) >= self.MAX_WAITING
        if full:
            self.flush()
        return True

    def quote(self, text: str) -> str:
        """``text`` as a JSON string, masked as every logged value is (cached: names repeat)."""
        quoted = self._quoted.get(text)
        if quoted is None:
            if len(self._quoted) > 10_000:
                self._quoted.clear()
            quoted = self._quoted[text] = _to_json(_masked(text))
        return quoted

    def flush(self) -> None:
        """Write the lines waiting, in order."""
        if not self._waiting:
            return
        with self._lock:
            lines, self._waiting = self._waiting, []
        if lines and self._handlers:
            text = "\n".join(lines)
            for handler in self._handlers:
                if handler.level <= logging.INFO:
                    _write_line(handler, text)


run_lines = RunLines()


class _RotatingFile(logging.handlers.RotatingFileHandler):
    """Rotation by size, without the two ``stat`` calls the standard handler makes per line
    (they guard against a log path that is not a regular file, and ours are created here)."""

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return self._full(len(self.format(record)) + 1)

    def roll_for(self, size: int) -> Any:
        """The stream to write ``size`` more characters to, rolled over first when it would pass
        ``maxBytes`` (the caller holds the lock)."""
        if self._full(size):
            self.doRollover()
        return self.stream

    def _full(self, size: int) -> bool:
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            return False
        position = self.stream.tell()
        return bool(position) and position + size >= self.maxBytes


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Formats libraries' records (SQLAlchemy, Alembic); renders a record once per renderer, so
    the console and the files share one JSON line."""

    def __init__(self, renderer: Any) -> None:
        super().__init__(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=_SHARED,
        )
        self._key = f"_orbit_rendered_{id(renderer)}"

    def format(self, record: logging.LogRecord) -> str:
        rendered = record.__dict__.get(self._key)
        if rendered is None:
            rendered = record.__dict__[self._key] = super().format(record)
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
