"""Settings: names, units and one-line errors."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.durations import parse_duration
from app.settings import Settings, SettingsError, load_settings


def test_bare_numbers_are_milliseconds_and_units_are_accepted() -> None:
    """POLL_INTERVAL=5000 is five seconds; 500ms, 5s, 10m and 7d work too."""
    settings = load_settings(POLL_INTERVAL="5000", METRICS_INTERVAL="10m", SHUTDOWN_GRACE="500ms")
    assert timedelta(seconds=5) == settings.POLL_INTERVAL
    assert timedelta(minutes=10) == settings.METRICS_INTERVAL
    assert timedelta(milliseconds=500) == settings.SHUTDOWN_GRACE
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("30", bare_unit="s") == timedelta(seconds=30)


def test_defaults_follow_the_worker_guide() -> None:
    """Defaults are those of the Orbit worker guide."""
    settings = load_settings()
    assert timedelta(milliseconds=5000) == settings.POLL_INTERVAL
    assert timedelta(milliseconds=60000) == settings.METRICS_INTERVAL
    assert timedelta(milliseconds=600000) == settings.MAX_EXECUTION_TIMEOUT
    assert settings.LOG_LEVEL == "info"
    assert settings.WORKER_CONCURRENCY == 2
    assert settings.stale_after == 3 * settings.HEARTBEAT_INTERVAL


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("POLL_INTERVAL", "-5", "duration"),
        ("POLL_INTERVAL", "soon", "duration"),
        ("POLL_INTERVAL", "0", "greater than zero"),
        ("WORKER_CONCURRENCY", "many", "integer"),
        ("LOG_LEVEL", "loud", "one of debug"),
        ("DATABASE_URL", "mysql://x", "postgresql://"),
        ("EXECUTOR_MAX_MEMORY", "lots", "a memory size"),
        ("EXECUTOR_MAX_MEMORY", "0", "a memory size"),
        ("EXECUTOR_RECYCLE_MEMORY", "-1MB", "a memory size"),
        ("EXECUTOR_RECYCLE_AFTER", "0", "greater than or equal to 1"),
        ("EXECUTOR_RECYCLE_AFTER", "often", "integer"),
    ],
)
def test_bad_values_name_the_variable_value_and_expectation(name: str, value: str, expected: str) -> None:
    """A bad value gives one line with the variable, the value and what was expected."""
    with pytest.raises(SettingsError) as error:
        load_settings(**{name: value})
    message = str(error.value)
    assert "\n" not in message
    assert name in message
    assert expected in message


def test_postgresql_urls_are_accepted_as_they_are() -> None:
    """Plain postgresql:// and postgres:// URLs are accepted."""
    settings = load_settings(DATABASE_URL="postgres://u:p@db:5432/orbit?pgbouncer=true")
    assert settings.DATABASE_URL is not None
    assert settings.DIRECT_URL is None


def test_health_defaults_are_the_guide_alert_rules() -> None:
    """5% failures over 5 minutes, 100 runs for 10 minutes, 60 s average; queue gauges every 5 s."""
    settings = load_settings()
    assert settings.HEALTH_FAILURE_RATE == 5
    assert timedelta(minutes=5) == settings.HEALTH_FAILURE_WINDOW
    assert settings.HEALTH_BACKLOG == 100
    assert timedelta(minutes=10) == settings.HEALTH_BACKLOG_FOR
    assert timedelta(seconds=60) == settings.HEALTH_AVG_DURATION
    assert timedelta(seconds=5) == settings.QUEUE_METRICS_INTERVAL
    assert settings.metrics_port == 0


def test_a_metrics_port_past_65535_is_refused() -> None:
    """METRICS_PORT + ORBIT_PROCESS_NUM must stay a valid port."""
    with pytest.raises(SettingsError, match="METRICS_PORT \\+ ORBIT_PROCESS_NUM"):
        load_settings(METRICS_PORT=65530, ORBIT_PROCESS_NUM=6)


def test_the_statement_timeout_follows_the_heartbeat() -> None:
    """Unset, STATEMENT_TIMEOUT is twice HEARTBEAT_INTERVAL, at least 5 s; 0 is refused."""
    assert load_settings().statement_timeout == timedelta(seconds=10)
    assert load_settings(HEARTBEAT_INTERVAL="200ms").statement_timeout == timedelta(seconds=5)
    assert load_settings(HEARTBEAT_INTERVAL="30s").statement_timeout == timedelta(minutes=1)
    assert load_settings(STATEMENT_TIMEOUT="2s").statement_timeout == timedelta(seconds=2)
    with pytest.raises(SettingsError, match="STATEMENT_TIMEOUT"):
        load_settings(STATEMENT_TIMEOUT="0")


@pytest.mark.parametrize(
    ("url", "flag", "pooled"),
    [
        ("postgresql://u@db:6543/orbit?pgbouncer=true", None, True),
        ("postgresql://u@db:6543/orbit?sslmode=require&pgbouncer=1", None, True),
        ("postgresql://u@db:6543/orbit?pgbouncer=false", None, False),
        ("postgresql://u@db:5432/orbit", None, False),
        ("postgresql://u@db:6543/orbit", "true", True),
    ],
)
def test_pgbouncer_mode_comes_from_the_url_or_the_setting(url: str, flag: str | None, pooled: bool) -> None:
    """``?pgbouncer=true`` (Prisma's hint) or PGBOUNCER=true: no prepared statements, the hint
    itself never reaches libpq, and DIRECT_URL stays direct."""
    from app.database import connect_args, resolve

    settings = load_settings(
        DATABASE_URL=url, DIRECT_URL="postgresql://u@db:5432/orbit", **({"PGBOUNCER": flag} if flag else {})
    )
    database = resolve(settings)
    assert database.pgbouncer is pooled
    assert "pgbouncer" not in database.url
    assert ("sslmode=require" in database.url) is ("sslmode" in url)
    args = connect_args(pgbouncer=database.pgbouncer, timeout=database.timeout)
    assert ("prepare_threshold" in args and args["prepare_threshold"] is None) is pooled
    assert args["tcp_user_timeout"] == 10_000 and args["keepalives"] == 1


# Every setting typed Duration (or Duration | None): they share its validator.
DURATION_SETTINGS = sorted(
    name
    for name, field in Settings.model_fields.items()
    if "_duration_ms" in repr(field.annotation) + repr(field.metadata)
)


def test_every_duration_setting_is_found() -> None:
    """The list the bound is checked on holds every Duration setting (a new one joins it)."""
    assert {"POLL_INTERVAL", "MAX_EXECUTION_TIMEOUT", "STALE_AFTER", "RETENTION_FAILED"} <= set(
        DURATION_SETTINGS
    )


@pytest.mark.parametrize("name", DURATION_SETTINGS)
@pytest.mark.parametrize("value", ["36526d", "99999999999999", "1e13", "99999999999999999999999999d"])
def test_every_duration_setting_is_at_most_100_years(name: str, value: str) -> None:
    """Past 100 years a duration overflows PostgreSQL's interval arithmetic: refused at start-up."""
    with pytest.raises(SettingsError) as error:
        load_settings(**{name: value})
    message = str(error.value)
    assert "\n" not in message
    assert name in message
    assert "duration" in message


def test_a_hundred_years_is_accepted() -> None:
    """The bound itself is a valid value (a retention kept that long, say)."""
    assert load_settings(RETENTION_FAILED="36525d").retention["failed"] == timedelta(days=36_525)
    assert parse_duration(36_525 * 86_400, bare_unit="s") == timedelta(days=36_525)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"HEARTBEAT_INTERVAL": "5s", "STALE_AFTER": "5s"}, "STALE_AFTER=5s: must be at least twice"),
        ({"HEARTBEAT_INTERVAL": "5s", "STALE_AFTER": "9999ms"}, "STALE_AFTER=9s: must be at least twice"),
        ({"HEARTBEAT_INTERVAL": "1m", "STALE_AFTER": "30s"}, "STALE_AFTER=30s: must be at least twice"),
        ({"MAX_EXECUTION_TIMEOUT": "0"}, "MAX_EXECUTION_TIMEOUT: must be greater than zero"),
        ({"STATEMENT_TIMEOUT": "25d"}, "STATEMENT_TIMEOUT: the statement timeout must be at most 24d"),
        ({"HEARTBEAT_INTERVAL": "13d"}, "HEARTBEAT_INTERVAL (twice it): the statement timeout"),
    ],
)
def test_intervals_that_cannot_work_together_are_refused(values: dict[str, str], expected: str) -> None:
    """A STALE_AFTER under two heartbeats would recover live runs; a statement timeout past
    PostgreSQL's int of milliseconds fails every connection; a 0 time limit fails every claim."""
    with pytest.raises(SettingsError) as error:
        load_settings(**values)
    assert "\n" not in str(error.value)
    assert expected in str(error.value)


def test_a_stale_after_of_two_heartbeats_is_accepted() -> None:
    """Exactly twice HEARTBEAT_INTERVAL is enough."""
    assert load_settings(HEARTBEAT_INTERVAL="5s", STALE_AFTER="10s").stale_after == timedelta(seconds=10)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://a:s3cret@b@c:x/orbit",
        "mysql://u:s3cret@db/orbit",
        "postgres://u@db:port/x?password=s3cret",
    ],
)
def test_a_bad_database_url_is_refused_without_its_password(url: str) -> None:
    """The URL is parsed at start-up (a bad port is one line), and its password is never echoed."""
    with pytest.raises(SettingsError) as error:
        load_settings(DATABASE_URL=url)
    assert "s3cret" not in str(error.value)
    assert "DATABASE_URL=" in str(error.value)


def test_executor_limits_are_off_unless_set() -> None:
    """No memory limit and no recycling by default; sizes are read with their unit."""
    settings = load_settings()
    assert (
        settings.EXECUTOR_MAX_MEMORY,
        settings.EXECUTOR_RECYCLE_AFTER,
        settings.EXECUTOR_RECYCLE_MEMORY,
    ) == (
        None,
        None,
        None,
    )
    assert load_settings(EXECUTOR_MAX_MEMORY="500MB").EXECUTOR_MAX_MEMORY == 500 * 2**20
