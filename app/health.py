"""Health of the fleet, from the database: the alert rules of the worker guide as defaults.

The same rules answer ``orbit health`` and a worker's ``GET /health``. Each rule yields a problem
with a severity; the worst severity is the status. Thresholds are settings (``HEALTH_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app import queries
from app.durations import format_duration
from app.masking import one_line
from app.settings import Settings


class Status(IntEnum):
    """Ordered by severity; the value is the exit status of ``orbit health``."""

    HEALTHY = 0
    WARNING = 1
    ERROR = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Problem:
    status: Status
    message: str


@dataclass(frozen=True)
class Health:
    """The guide's health shape: status, message, lastActivity, stuckRuns (and the problems)."""

    problems: list[Problem] = field(default_factory=list)
    last_activity: datetime | None = None
    stuck_runs: int = 0
    limit_waiting: int = 0  # runs waiting over HEALTH_BACKLOG_FOR because a limit holds them

    @property
    def status(self) -> Status:
        return max((p.status for p in self.problems), default=Status.HEALTHY)

    @property
    def message(self) -> str:
        worst = [p.message for p in self.problems if p.status == self.status]
        return "; ".join(worst) if worst else "all checks pass"

    def as_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "message": self.message,
            "lastActivity": None if self.last_activity is None else self.last_activity.isoformat(),
            "stuckRuns": self.stuck_runs,
            "waitingOnLimits": self.limit_waiting,
            "problems": [{"status": str(p.status), "message": p.message} for p in self.problems],
        }


def check(engine: Engine, settings: Settings) -> Health:
    """Evaluate the rules against the database; an unreachable database is an error."""
    try:
        with engine.connect() as conn:
            snapshot = queries.health_snapshot(
                conn,
                window=settings.HEALTH_FAILURE_WINDOW,
                backlog_for=settings.HEALTH_BACKLOG_FOR,
                stale_after=settings.stale_after,
            )
    except SQLAlchemyError as exc:
        return Health([Problem(Status.ERROR, f"database unreachable: {one_line(exc)}")])
    return Health(
        rules(snapshot, settings),
        snapshot.last_activity,
        int(snapshot.stuck_runs),
        int(snapshot.limit_waiting),
    )


def rules(snapshot: Any, settings: Settings) -> list[Problem]:
    """The problems a health snapshot shows (see :func:`app.queries.health_snapshot`)."""
    rule_sets = (_outcome_rules, _backlog_rules, _fleet_rules)
    return [problem for rule_set in rule_sets for problem in rule_set(snapshot, settings)]


def _outcome_rules(snapshot: Any, settings: Settings) -> list[Problem]:
    """Failure rate and average duration over HEALTH_FAILURE_WINDOW."""
    if not snapshot.finished:
        return []
    window = format_duration(settings.HEALTH_FAILURE_WINDOW)
    problems = []
    rate = 100 * snapshot.failed / snapshot.finished
    if rate > settings.HEALTH_FAILURE_RATE:
        problems.append(
            Problem(
                Status.WARNING,
                f"failure rate {rate:.1f}% over {window} ({snapshot.failed} of "
                f"{snapshot.finished} runs) exceeds {settings.HEALTH_FAILURE_RATE:g}%",
            )
        )
    limit = settings.HEALTH_AVG_DURATION.total_seconds()
    if snapshot.avg_s is not None and snapshot.avg_s > limit:
        average = f"average duration {snapshot.avg_s:.1f}s over {window} exceeds {limit:g}s"
        problems.append(Problem(Status.WARNING, average))
    return problems


def _backlog_rules(snapshot: Any, settings: Settings) -> list[Problem]:
    """Runs waiting too long."""
    problems = []
    waited = format_duration(settings.HEALTH_BACKLOG_FOR)
    # Runs a flow-control limit holds back wait by design: they are said, not counted as a backlog.
    held = int(snapshot.limit_waiting)
    unheld = snapshot.backlog_waiting - held
    if unheld > settings.HEALTH_BACKLOG:
        also = f"; {held} more wait on flow-control limits" if held else ""
        problems.append(
            Problem(
                Status.WARNING,
                f"{unheld} runs have waited over {waited} "
                f"(limit {settings.HEALTH_BACKLOG}); {snapshot.backlog} pending in all{also}",
            )
        )
    return problems


def _fleet_rules(snapshot: Any, settings: Settings) -> list[Problem]:
    """Silent workers, no worker at all, runs no live worker would ever take, stuck runs."""
    problems = []
    waited = format_duration(settings.HEALTH_BACKLOG_FOR)
    if snapshot.silent_workers:
        names = ", ".join(snapshot.silent_workers)
        problems.append(Problem(Status.WARNING, f"no heartbeat from worker(s): {names}"))
    if snapshot.backlog and not snapshot.live_workers:
        problems.append(Problem(Status.ERROR, f"{snapshot.backlog} runs pending and no live worker"))
    if snapshot.unserved_pipelines and snapshot.live_workers:
        # A typo in a pipeline's name, or a deploy that dropped its module: these runs would wait
        # forever while the fleet looks healthy.
        names = ", ".join(snapshot.unserved_pipelines)
        unserved = f"runs have waited over {waited} for pipeline(s) no live worker runs: {names}"
        problems.append(Problem(Status.WARNING, unserved))
    if snapshot.stuck_runs:
        problems.append(
            Problem(Status.WARNING, f"{snapshot.stuck_runs} stuck run(s): see orbit check-interrupted")
        )
    return problems
