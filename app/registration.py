"""A worker's registration: one live process per worker id.

Every write of the queue is fenced on the worker id, so two live processes under one id are one
worker to the database: each could finish the other's runs, and after a lost reply one takes up
the other's runs as its own. A process registers under an id only when whoever held it is gone:
stopped, silent for STALE_AFTER, or a process of this host that no longer runs (a worker
restarted at once after a crash keeps its id without waiting for its old heartbeat to go stale).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row

from app import queries


class WorkerIdInUse(Exception):
    """Another live process is registered under this worker id; one line for the user."""


@dataclass(frozen=True)
class Registration:
    """What a worker process records about itself in ``workers``."""

    id: str
    hostname: str
    pid: int
    concurrency: int
    pipeline_filter: str
    pipelines: list[str]
    version: str
    limits: str = "{}"  # JSON: its pipelines' limits from the code, as the claim reads them


def register(conn: Connection, me: Registration, stale_after: timedelta) -> None:
    """Register ``me``; raise WorkerIdInUse when a live process holds the id."""
    holder = queries.registered_worker(conn, me.id)
    gone = _gone_pid(holder, me)
    if queries.register_worker(conn, stale_after=stale_after, gone_pid=gone, **asdict(me)):
        return
    holder = queries.registered_worker(conn, me.id) or holder
    raise WorkerIdInUse(
        f"worker id {me.id!r} is in use by a live worker{_described(holder)}:"
        " give each worker its own WORKER_ID"
    )


def stop(conn: Connection, me: Registration) -> None:
    queries.stop_worker(conn, me.id, me.hostname, me.pid)


def _described(holder: Row[Any] | None) -> str:
    if holder is None:
        return ""
    return f" (host {holder.hostname}, pid {holder.pid}, heard from {holder.heartbeat_age_s:.1f}s ago)"


def _gone_pid(holder: Row[Any] | None, me: Registration) -> int | None:
    """The holder's pid when it was a process of this host that no longer runs, or this very
    process (a restarted container may get the same hostname and pid again)."""
    if holder is None or holder.hostname != me.hostname:
        return None
    if holder.pid == me.pid:
        return int(holder.pid)
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return int(holder.pid)
    except PermissionError:
        return None  # it runs, as another user
    return None
