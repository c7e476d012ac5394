"""The worker's turn with the database: outcomes written and runs claimed in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from app import queries
from app.queries import ClaimedRun, Success, Transition


@dataclass(frozen=True)
class Exchange:
    """``queries.exchange`` with what is fixed for one worker: its id, its pipelines' defaults
    (max attempts, time limit in seconds) and the code version it stamps on the runs it claims."""

    worker_id: str
    defaults: dict[str, tuple[int, float]]
    version: str

    def __call__(
        self, conn: Connection, successes: list[Success], transitions: list[Transition], limit: int = 0
    ) -> tuple[set[int], list[ClaimedRun]]:
        """Write the outcomes, claim up to ``limit`` runs; returns the ids still owned (whose
        outcome was written) and the runs claimed."""
        return queries.exchange(
            conn,
            worker_id=self.worker_id,
            successes=successes,
            transitions=transitions,
            limit=limit,
            defaults=self.defaults,
            version=self.version,
        )


def run_fields(run: ClaimedRun) -> dict[str, Any]:
    """The fields every log line about a run carries."""
    return {"run_id": run.id, "pipeline": run.pipeline, "attempt": run.attempt}
