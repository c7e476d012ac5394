"""Schedules on their own: the next slot, the slots due after a gap, and schedules refused at registration."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import registry
from app.registry import RegistryError
from app.schedules import MAX_BACKFILL, due_slots, next_slot

DAILY = registry.get("test.daily")  # 0 6 * * * UTC
BACKFILL = registry.get("test.daily_backfill")  # 30 6 * * * Europe/Paris, backfill


def _utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def test_next_slot_follows_the_time_zone() -> None:
    assert next_slot(DAILY, _utc(23, 5)) == _utc(23, 6)
    assert next_slot(DAILY, _utc(23, 6)) == _utc(24, 6)
    # 06:30 in Paris is 05:30 UTC in November.
    assert next_slot(BACKFILL, _utc(23, 5)) == _utc(23, 5, 30)


def test_missed_slots_are_skipped_unless_the_pipeline_asks_for_backfill() -> None:
    last, now = _utc(20, 6), _utc(23, 7)
    assert due_slots(DAILY, last, now) == [_utc(23, 6)]
    assert due_slots(BACKFILL, _utc(20, 5, 30), now) == [_utc(d, 5, 30) for d in (21, 22, 23)]
    assert due_slots(DAILY, _utc(23, 6), now) == []


def test_a_frequent_schedule_after_a_long_outage_enqueues_only_the_latest_slot() -> None:
    """Without backfill, 3 days of missed minutes give the latest minute, not a stale one."""
    minutely = registry.Pipeline("test.minutely", lambda ctx, params: None, schedule="* * * * *")
    assert due_slots(minutely, _utc(20, 0), _utc(23, 7, 0) + timedelta(seconds=30)) == [_utc(23, 7)]
    assert due_slots(minutely, _utc(20, 0), _utc(23, 7)) == [_utc(23, 7)]  # a slot exactly on now
    assert due_slots(minutely, _utc(23, 7), _utc(23, 7)) == []
    # With backfill every slot runs, oldest first, at most MAX_BACKFILL per pass.
    catch_up = registry.Pipeline(
        "test.catch_up", lambda ctx, params: None, schedule="* * * * *", backfill=True
    )
    slots = due_slots(catch_up, _utc(20, 0), _utc(23, 7))
    assert len(slots) == MAX_BACKFILL
    assert slots[0] == _utc(20, 0, 1) and slots == sorted(slots)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "0 6 * *"}, "bad cron expression '0 6 * *'"),
        ({"schedule": "61 * * * *"}, "bad cron expression"),
        ({"schedule": "0 6 * * *", "schedule_tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_schedule_is_refused_at_registration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.pipeline("test.bad_schedule", **kwargs)
