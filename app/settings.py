"""Typed settings: the only place that reads the environment (and an optional ``.env``).

Settings are read once, at start-up, by :func:`load_settings`, and passed down. A bad value stops
the program with one line naming the variable, the value and what was expected (exit status 2).
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import globs
from app.durations import EXPECTED as DURATION_EXPECTED
from app.durations import format_duration, parse_duration
from app.masking import mask_url
from app.sizes import EXPECTED as SIZE_EXPECTED
from app.sizes import parse_size
from app.states import FINISHED, ordered

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _duration_ms(value: Any) -> timedelta:
    return parse_duration(value, bare_unit="ms")


Duration = Annotated[timedelta, BeforeValidator(_duration_ms)]
MemorySize = Annotated[int, BeforeValidator(parse_size)]

# statement_timeout and tcp_user_timeout are whole milliseconds in a C int.
MAX_STATEMENT_TIMEOUT = timedelta(milliseconds=2**31 - 1)


class Settings(BaseSettings):
    """Every setting of Orbit; durations are milliseconds when a bare number."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    DATABASE_URL: str | None = None
    DIRECT_URL: str | None = None
    # DATABASE_URL goes through PgBouncer in transaction mode (or another pooler that does not
    # keep a session per client); ``?pgbouncer=true`` on the URL says the same.
    PGBOUNCER: bool = False
    # Every statement's deadline; unset: 2 x HEARTBEAT_INTERVAL, at least 5 seconds.
    STATEMENT_TIMEOUT: Duration | None = None
    DATA_DIR: Path = Path(".orbit")

    POLL_INTERVAL: Duration = timedelta(milliseconds=5000)
    METRICS_INTERVAL: Duration = timedelta(milliseconds=60_000)
    MAX_EXECUTION_TIMEOUT: Duration = timedelta(milliseconds=600_000)
    HEARTBEAT_INTERVAL: Duration = timedelta(seconds=5)
    STALE_AFTER: Duration | None = None
    RECOVERY_INTERVAL: Duration = timedelta(seconds=30)
    WORKER_RETENTION: Duration = timedelta(days=1)
    SHUTDOWN_GRACE: Duration = timedelta(seconds=30)
    # After the grace, how long a stopping worker keeps trying to write the outcomes it holds
    # (the database is away); what is still unwritten then is saved in DATA_DIR (see app.spool).
    # supervisord's stopwaitsecs must exceed SHUTDOWN_GRACE + SHUTDOWN_WRITE_TIMEOUT + a few seconds.
    SHUTDOWN_WRITE_TIMEOUT: Duration = timedelta(seconds=20)
    RETRY_BACKOFF_BASE: Duration = timedelta(seconds=2)
    RETRY_BACKOFF_MAX: Duration = timedelta(minutes=10)

    # Finished runs older than this are deleted by the fleet's leader (0 keeps them forever);
    # each status may override it, e.g. keep failures longer for post-mortems.
    RETENTION: Duration = timedelta(days=7)
    RETENTION_SUCCEEDED: Duration | None = None
    RETENTION_FAILED: Duration | None = None
    RETENTION_TIMED_OUT: Duration | None = None
    RETENTION_CANCELLED: Duration | None = None
    RETENTION_BATCH: int = Field(default=1000, ge=1, le=100_000)

    LOG_LEVEL: str = "info"
    LOG_FORMAT: Literal["auto", "json", "console"] = "auto"
    LOGS_DIR: Path = Path("logs")
    LOG_MAX_BYTES: int = Field(default=10 * 1024 * 1024, ge=0)
    LOG_BACKUPS: int = Field(default=10, ge=0)

    WORKER_CONCURRENCY: int = Field(default=2, ge=1, le=1024)
    # A run's memory limit when its pipeline sets none (500MB, 2GB; unset: none): past it, the
    # run's executor is killed and the run fails with kind `memory`, retried like any failure.
    EXECUTOR_MAX_MEMORY: MemorySize | None = None
    # An executor is replaced between runs after this many runs, or once its resident size has
    # reached this size (for pipelines that leak); unset: never.
    EXECUTOR_RECYCLE_AFTER: int | None = Field(default=None, ge=1, le=10**9)
    EXECUTOR_RECYCLE_MEMORY: MemorySize | None = None
    WORKER_ID: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    PIPELINE_FILTER: str = "*"
    ORBIT_PIPELINES: str = ""
    ORBIT_CODE_VERSION: str = ""

    METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    METRICS_HOST: str = "127.0.0.1"
    # supervisord sets it from %(process_num)d so each process of a group serves its own port.
    ORBIT_PROCESS_NUM: int = Field(default=0, ge=0, le=1000)
    QUEUE_METRICS_INTERVAL: Duration = timedelta(seconds=5)

    # orbit serve: the HTTP API and the console. Without any API token it serves loopback only.
    SERVE_HOST: str = "127.0.0.1"
    SERVE_PORT: int = Field(default=8080, ge=0, le=65535)
    # Writes (enqueue, cancel, retry, ...) each token may make per minute, per serve process.
    SERVE_WRITE_RATE: int = Field(default=6000, ge=1, le=10_000_000)
    # How often a serve process reads what changed, for its live views (GET /api/events).
    SERVE_EVENTS_INTERVAL: Duration = timedelta(seconds=1)

    # Health rules (`orbit health`, GET /health); the defaults are the alert rules of the guide.
    HEALTH_FAILURE_RATE: float = Field(default=5.0, ge=0, le=100)
    HEALTH_FAILURE_WINDOW: Duration = timedelta(minutes=5)
    HEALTH_BACKLOG: int = Field(default=100, ge=0)
    HEALTH_BACKLOG_FOR: Duration = timedelta(minutes=10)
    HEALTH_AVG_DURATION: Duration = timedelta(seconds=60)

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> str:
        level = str(value).strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("PIPELINE_FILTER")
    @classmethod
    def _glob(cls, value: str) -> str:
        return globs.check_filter(value.strip())

    @field_validator("DATABASE_URL", "DIRECT_URL", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str | None:
        if value is None or str(value).strip() == "":
            return None
        url = str(value).strip()
        if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("a postgresql:// URL")
        from sqlalchemy.engine import make_url

        # Parsed here, as every connection parses it later: a bad port is this one line at start-up.
        try:
            make_url(url)
        except ValueError:
            raise ValueError("a postgresql:// URL (user:password@host:port/database)") from None
        return url

    @model_validator(mode="after")
    def _consistent_intervals(self) -> Settings:
        for name in (
            "POLL_INTERVAL",
            "HEARTBEAT_INTERVAL",
            "STATEMENT_TIMEOUT",
            "MAX_EXECUTION_TIMEOUT",
            "SERVE_EVENTS_INTERVAL",
        ):
            if getattr(self, name) is not None and getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name}: must be greater than zero")
        # A heartbeat is written every HEARTBEAT_INTERVAL, and one may be late by a slow turn: with
        # less than two intervals of silence allowed, live runs are recovered and executed twice.
        if self.STALE_AFTER is not None and self.STALE_AFTER < 2 * self.HEARTBEAT_INTERVAL:
            raise ValueError(
                f"STALE_AFTER={format_duration(self.STALE_AFTER)}: must be at least twice HEARTBEAT_INTERVAL"
                f" ({format_duration(2 * self.HEARTBEAT_INTERVAL)}), or live runs are recovered and run twice"
            )
        if self.statement_timeout > MAX_STATEMENT_TIMEOUT:
            name = "STATEMENT_TIMEOUT" if self.STATEMENT_TIMEOUT else "HEARTBEAT_INTERVAL (twice it)"
            limit = format_duration(MAX_STATEMENT_TIMEOUT)
            raise ValueError(f"{name}: the statement timeout must be at most {limit} (PostgreSQL's limit)")
        if self.METRICS_PORT and self.METRICS_PORT + self.ORBIT_PROCESS_NUM > 65535:
            raise ValueError("METRICS_PORT + ORBIT_PROCESS_NUM: must be at most 65535")
        return self

    @property
    def log_file_stem(self) -> str:
        """``worker``, or ``worker-N`` for process N of a group: size rotation is per process."""
        return (
            f"worker-{self.ORBIT_PROCESS_NUM}" if "ORBIT_PROCESS_NUM" in self.model_fields_set else "worker"
        )

    @property
    def statement_timeout(self) -> timedelta:
        """How long any statement may take before the server (or, failing that, the client) ends it."""
        return self.STATEMENT_TIMEOUT or max(2 * self.HEARTBEAT_INTERVAL, timedelta(seconds=5))

    @property
    def stale_after(self) -> timedelta:
        """How long a run's heartbeat may be silent before the run counts as interrupted."""
        return self.STALE_AFTER or 3 * self.HEARTBEAT_INTERVAL

    @property
    def retention(self) -> dict[str, timedelta]:
        """How long finished runs of each status are kept; a status left out is kept forever."""
        kept = {}
        for status in ordered(FINISHED):
            override = getattr(self, f"RETENTION_{status.upper()}")
            age = self.RETENTION if override is None else override
            if age > timedelta(0):
                kept[str(status)] = age
        return kept

    @property
    def metrics_port(self) -> int:
        """This process's HTTP port (0: no server): METRICS_PORT plus the supervisord process number."""
        return self.METRICS_PORT + self.ORBIT_PROCESS_NUM if self.METRICS_PORT else 0

    @property
    def pipeline_modules(self) -> list[str]:
        return [m.strip() for m in self.ORBIT_PIPELINES.split(",") if m.strip()]

    def matches_filter(self, pipeline: str) -> bool:
        return globs.matches_filter(self.PIPELINE_FILTER, pipeline)


class SettingsError(Exception):
    """A setting has a bad value; the message is one line for the user."""


def _describe(error: dict[str, Any]) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "settings"
    value = error.get("input")
    if name in ("DATABASE_URL", "DIRECT_URL") and isinstance(value, str):
        value = mask_url(value)
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if name.endswith("MEMORY"):
        message = message if message.startswith("a memory size") else SIZE_EXPECTED
    elif (
        "duration" in message
        or name.endswith(("INTERVAL", "TIMEOUT", "GRACE", "STALE_AFTER"))
        or (name.startswith("RETENTION") and name != "RETENTION_BATCH")
    ):
        message = message if message.startswith("a duration") else DURATION_EXPECTED
    if isinstance(value, dict):
        return f"invalid setting: {message}"
    return f"invalid setting {name}={value!r}: expected {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; raise :class:`SettingsError` with a one-line message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(dict(exc.errors()[0]))) from None


def load_settings_or_exit(**overrides: Any) -> Settings:
    """As :func:`load_settings`, for entry points: print the error and exit with status 2."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        print(f"orbit: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
