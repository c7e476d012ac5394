"""Memory sizes (app.sizes): units in powers of 1024, bytes when bare, the 1 MB and 1 PB bounds,
the short form."""

from __future__ import annotations

import math

import pytest

from app.sizes import EXPECTED, TOO_BIG, format_size, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500MB", 500 * 2**20),
        ("500mb", 500 * 2**20),
        ("512MiB", 512 * 2**20),
        ("500M", 500 * 2**20),
        (" 1.5 GB ", 3 * 2**29),
        ("2048KB", 2 * 2**20),
        ("1TB", 2**40),
        ("1048576", 2**20),
        (2**21, 2**21),
    ],
)
def test_a_size_is_read_in_its_unit(value: str | int, expected: int) -> None:
    """M, MB and MiB alike are 2^20 bytes, as ps and process managers read them; bare is bytes."""
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["fast", "-5MB", "0", "500", "1KB", "", "5 PB", "1e9", True, math.nan])
def test_what_is_not_a_usable_size_is_refused_saying_what_is_expected(value: str | float) -> None:
    """Below 1 MB a Python process could never meet the limit: refused like nonsense."""
    with pytest.raises(ValueError, match="^" + EXPECTED.split("(")[0].strip()):
        parse_size(value)


def test_a_size_past_a_petabyte_is_refused() -> None:
    with pytest.raises(ValueError, match=TOO_BIG):
        parse_size("2048TB")


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (500 * 2**20, "500 MB"),
        (3 * 2**29, "1.5 GB"),
        (900 * 2**10, "900 KB"),
        (612 * 2**20 + 1, "612 MB"),
        (12, "12 B"),
    ],
)
def test_sizes_are_shown_short(size: int, shown: str) -> None:
    assert format_size(size) == shown
