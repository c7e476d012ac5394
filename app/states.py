"""The run state machine.

::

    pending ──claim──▶ running ──success──▶ succeeded
       ▲                  │ ├──error, attempts left / snooze / shutdown / rescue──▶ pending
       │                  │ ├──error, no attempts left──▶ failed
       │                  │ ├──time limit, no attempts left──▶ timed_out
       └──resume──────────┘ └──cancel──▶ cancelled
    (pending ──cancel──▶ cancelled; failed, timed_out ──resume──▶ pending)

Every transition in :mod:`app.queries` is written "set state X where state is still Y", so a late
or duplicate actor changes nothing. The database's CHECK constraint mirrors :class:`RunStatus`.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


FINISHED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED})
RESUMABLE = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT})


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ErrorKind(StrEnum):
    """Why an attempt ended without success, as recorded in ``runs.errors``."""

    ERROR = "error"
    TIMEOUT = "timeout"
    CRASH = "crash"
    INTERRUPTED = "interrupted"
    INVALID = "invalid"
