"""The ``@pipeline`` decorator: what it accepts, and one clear error at import for what it cannot."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from app import registry
from app.registry import RegistryError, pipeline


def _noop(ctx: Any, params: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be 1 to 1000, not 0"),
        ({"max_attempts": 2**40}, "max_attempts must be 1 to 1000, not 1099511627776"),
        ({"max_attempts": "3"}, "max_attempts must be a whole number, not '3'"),
        ({"max_attempts": 2.5}, "max_attempts must be a whole number, not 2.5"),
        ({"timeout": 1e13}, "timeout 10000000000000.0: expected a duration of at most 100 years"),
        ({"timeout": "99999999999999d"}, "timeout '99999999999999d': expected a duration of at most"),
        ({"timeout": float("nan")}, "timeout nan: expected a duration"),
        ({"timeout": "soon"}, "timeout 'soon': expected a duration"),
        ({"timeout": 0}, "timeout must be greater than zero"),
        ({"max_memory": "fast"}, "max_memory 'fast': expected a memory size"),
        ({"max_memory": 0}, "max_memory 0: expected a memory size"),
        ({"max_memory": "-1GB"}, "max_memory '-1GB': expected a memory size"),
        ({"max_memory": "2048TB"}, "max_memory '2048TB': expected a memory size of at most 1 PB"),
    ],
)
def test_absurd_options_are_refused_at_import(options: dict[str, Any], message: str) -> None:
    """A time limit or attempt count PostgreSQL cannot hold is refused where it is written."""
    with pytest.raises(RegistryError) as error:
        pipeline("test.absurd", **options)(_noop)
    assert str(error.value) == f"pipeline test.absurd: {message}" or (
        ("duration" in message or "memory size" in message)
        and str(error.value).startswith(f"pipeline test.absurd: {message}")
    )
    assert "\n" not in str(error.value)
    assert "test.absurd" not in registry.all_pipelines()


@pytest.fixture
def forget() -> Iterator[list[str]]:
    """Pipelines a test registers, taken out of the registry afterwards (workers load all of it)."""
    names: list[str] = []
    yield names
    for name in names:
        registry._registry.pop(name, None)


def test_the_bounds_themselves_are_accepted(forget: list[str]) -> None:
    """1000 attempts and a 100-year time limit are valid."""
    forget.append("test.bounds")
    pipeline("test.bounds", max_attempts=1000, timeout="36525d")(_noop)
    registered = registry.get("test.bounds")
    assert (registered.max_attempts, registered.timeout) == (1000, timedelta(days=36_525))


def test_a_memory_limit_is_kept_in_bytes(forget: list[str]) -> None:
    forget.append("test.memory")
    pipeline("test.memory", max_memory="1.5GB")(_noop)
    assert registry.get("test.memory").max_memory == 3 * 2**29
