"""Every SQL statement of the queue, as bound-parameter statements with small typed helpers.

Each state change is written "set X where the run is still in state Y (and still ours)", so a
late, duplicate or zombie actor changes nothing. Lease arithmetic uses the database clock only.
The statements of the hot paths (enqueue, claim, outcomes) are psycopg strings (``%(name)s``) run
on the driver under the SQLAlchemy connection (see ``common.on_driver``); the others are ``text()``.

By concern: ``runs`` (enqueue, steps, reading runs), ``search`` (runs found by filters for people,
bulk actions, counts and changes), ``access`` (API tokens, console sessions), ``claim`` (the claim,
and the turn that sends it with the outcomes), ``outcomes`` (the fenced writes of how runs
ended), ``limits`` (flow control's limits in force and their counts), ``fleet`` (workers,
heartbeats, interrupted runs), ``inspect`` (queue depth, reports, health) and ``upkeep`` (pauses,
retention, schedules); ``common`` holds what they share.
Callers use ``from app import queries`` and the names below. Outside this package are only the
plumbing of a connection: the liveness ping and the migrations' lock (app.database), and LISTEN
(app.notifier).
"""

from __future__ import annotations

from app.queries.access import (
    any_token,
    create_session,
    create_token,
    end_session,
    list_tokens,
    revoke_token,
    session,
    token_by_hash,
)
from app.queries.claim import (
    ClaimedRun,
    Claimer,
    Defaults,
    exchange,
    unheld_runs,
)
from app.queries.common import to_json
from app.queries.fleet import (
    Beat,
    beat,
    cancel,
    heartbeat,
    interrupted,
    prune_workers,
    recover,
    register_worker,
    registered_worker,
    resume_finished,
    stop_worker,
)
from app.queries.inspect import (
    QueueDepth,
    fleet_report,
    health_snapshot,
    queue_depth,
)
from app.queries.limits import effective_limits
from app.queries.outcomes import Success, Transition, landed
from app.queries.runs import (
    NewRun,
    completed_step,
    get_run,
    insert_run,
    insert_run_once,
    insert_runs,
    list_runs,
    list_workers,
    run_steps,
    save_step,
)
from app.queries.search import (
    RunFilter,
    cancel_many,
    cancel_pending_matching,
    changes,
    counts,
    last_finished,
    last_id,
    matching_ids,
    oldest_due,
    per_minute,
    search_runs,
)
from app.queries.upkeep import (
    clear_limit,
    count_expired,
    db_now,
    lead,
    list_limits,
    list_pauses,
    list_schedules,
    pause,
    prune_runs,
    prune_starts,
    running_matching,
    save_schedule,
    schedule_states,
    set_limit,
    unpause,
    worker_pipelines,
)

__all__ = [
    "Beat",
    "ClaimedRun",
    "Claimer",
    "Defaults",
    "NewRun",
    "QueueDepth",
    "RunFilter",
    "Success",
    "Transition",
    "any_token",
    "beat",
    "cancel",
    "cancel_many",
    "cancel_pending_matching",
    "changes",
    "clear_limit",
    "completed_step",
    "count_expired",
    "counts",
    "create_session",
    "create_token",
    "db_now",
    "effective_limits",
    "end_session",
    "exchange",
    "fleet_report",
    "get_run",
    "health_snapshot",
    "heartbeat",
    "insert_run",
    "insert_run_once",
    "insert_runs",
    "interrupted",
    "landed",
    "last_finished",
    "last_id",
    "lead",
    "list_limits",
    "list_pauses",
    "list_runs",
    "list_schedules",
    "list_tokens",
    "list_workers",
    "matching_ids",
    "oldest_due",
    "pause",
    "per_minute",
    "prune_runs",
    "prune_starts",
    "prune_workers",
    "queue_depth",
    "recover",
    "register_worker",
    "registered_worker",
    "resume_finished",
    "revoke_token",
    "run_steps",
    "running_matching",
    "save_schedule",
    "save_step",
    "schedule_states",
    "search_runs",
    "session",
    "set_limit",
    "stop_worker",
    "to_json",
    "token_by_hash",
    "unheld_runs",
    "unpause",
    "worker_pipelines",
]
