"""Schedules: the fleet's leader enqueues each due cron slot of a scheduled pipeline, once.

Exactly once comes from ``schedules.last_slot``: it is read with FOR UPDATE and moved forward in
the same transaction that inserts the slot's run, under the leader lock. The run also carries
an idempotency key naming its slot, so even a second writer could not queue the slot twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from croniter import croniter
from sqlalchemy import Connection

from app import queries
from app.queries import NewRun
from app.registry import Pipeline

log = structlog.get_logger("orbit.schedules")

# A backfill after a long outage of a frequent schedule enqueues this many slots per pass; the
# next pass continues from there.
MAX_BACKFILL = 1000


def next_slot(pipeline: Pipeline, after: datetime) -> datetime:
    """The first slot of ``pipeline``'s schedule strictly after ``after``."""
    assert pipeline.schedule is not None
    start = after.astimezone(ZoneInfo(pipeline.schedule_tz))
    return croniter(pipeline.schedule, start).get_next(datetime)  # type: ignore[no-any-return]


def due_slots(pipeline: Pipeline, last_slot: datetime, now: datetime) -> list[datetime]:
    """Slots after ``last_slot`` up to ``now``: all with backfill, else only the latest."""
    if not pipeline.backfill:
        # Straight to the latest: walking from last_slot would stop at MAX_BACKFILL, on a stale slot.
        latest = latest_slot(pipeline, now)
        return [latest] if latest > last_slot else []
    slots: list[datetime] = []
    slot = next_slot(pipeline, last_slot)
    while slot <= now and len(slots) < MAX_BACKFILL:
        slots.append(slot)
        slot = next_slot(pipeline, slot)
    return slots


def slot_key(pipeline: str, slot: datetime) -> str:
    return f"schedule:{pipeline}:{slot.astimezone(ZoneInfo('UTC')).isoformat()}"


@dataclass
class Scheduler:
    """Leader duty of every worker: enqueue the due slots of the scheduled pipelines it runs."""

    pipelines: list[Pipeline]

    @classmethod
    def of(cls, pipelines: Iterable[Pipeline]) -> Scheduler:
        return cls([p for p in pipelines if p.schedule is not None])

    def run_once(self, conn: Connection) -> int | None:
        """One pass in the caller's transaction; None when another worker is the leader."""
        if not self.pipelines or not queries.lead(conn):
            return None
        now = queries.db_now(conn)
        states = queries.schedule_states(conn, [p.name for p in self.pipelines])
        enqueued = 0
        for pipeline in self.pipelines:
            state = states.get(pipeline.name)
            last = None if state is None else state.last_slot
            enqueued += self._advance(conn, pipeline, last, now)
        return enqueued

    def _advance(self, conn: Connection, pipeline: Pipeline, last: datetime | None, now: datetime) -> int:
        # A schedule seen for the first time starts from now: there is no history to catch up.
        slots = [] if last is None else due_slots(pipeline, last, now)
        for slot in slots:
            run = NewRun(pipeline.name, {}, run_at=slot, key=slot_key(pipeline.name, slot))
            run_id = queries.insert_run(conn, run)
            log.info("Scheduled run enqueued", pipeline=pipeline.name, slot=slot.isoformat(), run_id=run_id)
        if last is not None and not slots:
            return 0
        newest = slots[-1] if slots else latest_slot(pipeline, now)
        queries.save_schedule(conn, pipeline.name, newest, next_slot(pipeline, max(newest, now)))
        return len(slots)


def latest_slot(pipeline: Pipeline, now: datetime) -> datetime:
    """The last slot at or before ``now``."""
    assert pipeline.schedule is not None
    start = now.astimezone(ZoneInfo(pipeline.schedule_tz))
    previous: datetime = croniter(pipeline.schedule, start).get_prev(datetime)
    # get_prev is strictly before its start; a slot falling exactly on now is due.
    following = next_slot(pipeline, previous)
    return following if following <= now else previous
