"""The run lifecycle: its states, which of them are live or finished, and the retry rule.

::

    pending ──claim──▶ running ──success──▶ succeeded
       ▲                  │ ├──error, attempts left / snooze / shutdown / rescue──▶ pending
       │                  │ ├──error, no attempts left──▶ failed
       │                  │ ├──time limit, no attempts left──▶ timed_out
       └──resume──────────┘ └──cancel──▶ cancelled
    (pending ──cancel──▶ cancelled; failed, timed_out ──resume──▶ pending)

Every transition in :mod:`app.queries` is written "set state X where state is still Y", so a
late or duplicate actor changes nothing; its SQL spells states and the retry rule with the
constants below, never by hand. The database's CHECK constraints mirror :class:`RunStatus` and
:class:`StepStatus`. :mod:`app.outcomes` maps the end of an attempt to its transition.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


# A run holds its key while live; a finished run never changes again (until resumed).
LIVE = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
FINISHED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED})
# How an attempt can finish a run (a cancelled run ended without one): the outcomes counted in
# the metrics, the fleet report and the health rules.
FINAL_OUTCOMES = FINISHED - {RunStatus.CANCELLED}
RESUMABLE = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT})


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ErrorKind(StrEnum):
    """Why an attempt ended without success, as recorded in ``runs.errors``."""

    ERROR = "error"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASH = "crash"
    INTERRUPTED = "interrupted"
    INVALID = "invalid"


def ordered(statuses: Iterable[RunStatus]) -> tuple[RunStatus, ...]:
    """``statuses`` in the enum's order (the lifecycle's): for output and SQL that must not vary."""
    wanted = set(statuses)
    return tuple(status for status in RunStatus if status in wanted)


def retries(attempt: int, max_attempts: int | None) -> bool:
    """The retry rule: whether a run whose attempt number ``attempt`` failed goes back to pending.

    ``max_attempts`` counts the first attempt; a run never claimed may have none yet (the claim
    writes its pipeline's default), and then has one.
    """
    return attempt < (max_attempts or 1)


# --- the same, as SQL text ------------------------------------------------------------------------
# Built once at import from the enums above (constants, never input), so the queue's statements
# cannot drift from the Python rules.


def sql_literal(status: RunStatus | StepStatus | ErrorKind) -> str:
    """``'pending'``: a state as a SQL string literal."""
    return f"'{status.value}'"


def sql_list(statuses: Iterable[RunStatus]) -> str:
    """``('pending', 'running')``: states as a SQL list for ``IN``, in the enum's order."""
    return "(" + ", ".join(sql_literal(status) for status in ordered(statuses)) + ")"


# :func:`retries` over a row of runs named ``r``.
RETRIES_SQL = "r.attempt < COALESCE(r.max_attempts, 1)"
