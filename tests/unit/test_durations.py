"""Human durations (app.durations): units, the bare number's unit, the 100-year bound, the short form."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from app.durations import EXPECTED, MAX_DURATION, TOO_LONG, format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("5s", timedelta(seconds=5)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        (" 1.5 S ", timedelta(milliseconds=1500)),
        ("0", timedelta(0)),
        (timedelta(seconds=3), timedelta(seconds=3)),
    ],
)
def test_a_unit_or_a_timedelta_is_taken_as_given(value: str | timedelta, expected: timedelta) -> None:
    """Units are case-insensitive and may be spaced; a timedelta is returned unchanged."""
    assert parse_duration(value) == expected


def test_a_bare_number_is_in_the_callers_unit() -> None:
    """Settings read a bare number as milliseconds, CLI flags as seconds."""
    assert parse_duration("250") == timedelta(milliseconds=250)
    assert parse_duration(250) == timedelta(milliseconds=250)
    assert parse_duration("30", bare_unit="s") == timedelta(seconds=30)
    assert parse_duration(1.5, bare_unit="s") == timedelta(milliseconds=1500)


@pytest.mark.parametrize("value", ["-1", "soon", "5 weeks", "", "1e3", True, -1, math.nan])
def test_what_is_not_a_duration_is_refused_saying_what_is_expected(value: str | float) -> None:
    """Negative numbers, words, unknown units, booleans and NaN: ValueError naming the expected form."""
    with pytest.raises(ValueError, match="^" + EXPECTED.split("(")[0]):
        parse_duration(value)


@pytest.mark.parametrize("value", ["36526d", 10**400, math.inf, MAX_DURATION + timedelta(milliseconds=1)])
def test_past_a_hundred_years_is_refused(value: str | float | timedelta) -> None:
    """The bound holds for every form, a number past a float's range included."""
    with pytest.raises(ValueError, match="at most 100 years"):
        parse_duration(value)
    assert TOO_LONG.startswith("a duration of at most 100 years")


def test_the_bound_itself_is_accepted() -> None:
    """Exactly 100 years is a valid duration."""
    assert parse_duration("36525d") == MAX_DURATION


@pytest.mark.parametrize(
    ("delta", "shown"),
    [
        (timedelta(0), "0ms"),
        (timedelta(milliseconds=850), "850ms"),
        (timedelta(seconds=1), "1s"),
        (timedelta(hours=2, minutes=15, seconds=32), "2h 15m 32s"),
        (timedelta(days=1, seconds=5), "1d 5s"),
        (timedelta(hours=1, milliseconds=400), "1h"),
    ],
)
def test_the_short_form_shows_whole_units_only(delta: timedelta, shown: str) -> None:
    """Under a second in milliseconds; above, each non-zero unit, milliseconds dropped."""
    assert format_duration(delta) == shown
