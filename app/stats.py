"""In-process counters of one worker, and the periodic ``Worker Metrics Report``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from app.durations import format_duration


@dataclass
class WorkerStats:
    """What this process has run since it started (the fields of the worker guide)."""

    started: float = field(default_factory=time.monotonic)
    succeeded: int = 0
    failed: int = 0
    total_duration: float = 0.0
    min_duration: float | None = None
    max_duration: float | None = None
    last_activity: float | None = None

    def record(self, *, success: bool, duration: float) -> None:
        if success:
            self.succeeded += 1
        else:
            self.failed += 1
        self.total_duration += duration
        self.min_duration = duration if self.min_duration is None else min(self.min_duration, duration)
        self.max_duration = duration if self.max_duration is None else max(self.max_duration, duration)
        self.last_activity = time.monotonic()

    @property
    def total(self) -> int:
        return self.succeeded + self.failed

    def report(self, now: float | None = None) -> dict[str, Any]:
        uptime = max((now or time.monotonic()) - self.started, 1e-9)
        return build_report(
            uptime_s=uptime,
            succeeded=self.succeeded,
            failed=self.failed,
            avg_s=self.total_duration / self.total if self.total else None,
            min_s=self.min_duration,
            max_s=self.max_duration,
            hours=uptime / 3600,
        )


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{round(seconds * 1000)}ms"


def build_report(
    *,
    uptime_s: float,
    succeeded: int,
    failed: int,
    avg_s: float | None,
    min_s: float | None,
    max_s: float | None,
    hours: float,
) -> dict[str, Any]:
    """The report in the guide's shape; shared by the worker and ``orbit metrics``."""
    total = succeeded + failed
    error_rate = 100 * failed / total if total else 0.0
    return {
        "uptime": format_duration(timedelta(seconds=uptime_s)),
        "totalRuns": total,
        "succeeded": succeeded,
        "failed": failed,
        "errorRate": f"{error_rate:.2f}%",
        "successRate": f"{(100 - error_rate) if total else 0.0:.2f}%",
        "runsPerHour": f"{total / hours if hours > 0 else 0.0:.2f}",
        "avgDuration": _ms(avg_s),
        "minDuration": _ms(min_s),
        "maxDuration": _ms(max_s),
    }
