"""Flow control's values (app.limits) and how ``@pipeline`` refuses bad ones: no database."""

from __future__ import annotations

import pytest

from app.limits import LimitError, Rate, limits, parse_rate
from app.registry import RegistryError, pipeline


@pytest.mark.parametrize(
    ("text", "rate", "shown"),
    [
        ("100/m", Rate(100, 60), "100/m"),
        ("5/s", Rate(5, 1), "5/s"),
        ("1000/h", Rate(1000, 3600), "1000/h"),
        (" 10 / 5m ", Rate(10, 300), "10/5m"),
        ("7/24h", Rate(7, 86400), "7/24h"),
    ],
)
def test_a_rate_is_a_count_over_a_window(text: str, rate: Rate, shown: str) -> None:
    assert parse_rate(text) == rate
    assert str(rate) == shown


@pytest.mark.parametrize(
    "text", ["fast", "", "100", "0/s", "-1/s", "10/0s", "10/d", "1/25h", 100, None, "1e3/s"]
)
def test_a_bad_rate_is_one_line_that_shows_the_form(text: object) -> None:
    with pytest.raises(LimitError) as refused:
        parse_rate(text)
    assert "\n" not in str(refused.value) and "rate" in str(refused.value)


@pytest.mark.parametrize("cap", [0, -1, True, 2.5, "2", 10**7])
def test_a_cap_must_be_a_whole_number_from_one(cap: object) -> None:
    with pytest.raises(LimitError, match="concurrency must be a whole number from 1"):
        limits(concurrency=cap)
    with pytest.raises(LimitError, match="group_concurrency must be a whole number from 1"):
        limits(group_concurrency=cap)


def test_limits_are_false_when_none_applies_and_give_the_claim_its_fields() -> None:
    assert not limits()
    flow = limits(2, "100/m", 1)
    assert flow
    assert flow.as_claim() == {
        "concurrency": 2,
        "rate_count": 100,
        "rate_seconds": 60.0,
        "group_concurrency": 1,
    }


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"concurrency": 0}, "pipeline x.bad: concurrency must be"),
        ({"rate": "fast"}, "pipeline x.bad: rate 'fast'"),
        ({"group_concurrency": -2}, "pipeline x.bad: group_concurrency must be"),
    ],
)
def test_pipeline_refuses_a_bad_limit_at_import(given: dict[str, object], said: str) -> None:
    with pytest.raises(RegistryError, match=said):
        pipeline("x.bad", **given)  # type: ignore[arg-type]
