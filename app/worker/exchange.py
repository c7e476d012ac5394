"""The worker's turn with the database: outcomes written and runs claimed in one transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from app import queries
from app.limits import Limits
from app.queries import ClaimedRun, Claimer, Success, Transition


@dataclass
class Exchange:
    """``queries.exchange`` with what is fixed for one worker: its id, its pipelines' defaults
    (max attempts, time limit in seconds), the code version it stamps on the runs it claims, its
    pipelines' limits from the code, and whether its session may be shared through a pooler; and
    what its heartbeat last read: whether the limits table holds any override (until then, it
    may). After each turn, ``contended`` names its limited pipelines another worker was claiming
    (they got no room)."""

    worker_id: str
    defaults: dict[str, tuple[int, float]]
    version: str
    limits: Mapping[str, Limits] = field(default_factory=dict)
    pooled: bool = False
    overrides: bool = True

    def __post_init__(self) -> None:
        self.claimer = Claimer.of(self.worker_id, self.defaults, self.version, self.limits)
        self.contended: list[str] = []

    def __call__(
        self,
        conn: Connection,
        successes: list[Success],
        transitions: list[Transition],
        limit: int = 0,
        ended: Collection[str] | None = None,
        waited: float = 0.0,
    ) -> tuple[set[int], list[ClaimedRun]]:
        """Write the outcomes, claim up to ``limit`` runs; returns the ids still owned (whose
        outcome was written) and the runs claimed. ``ended``: the pipelines of those outcomes'
        runs, when known (an outcome frees room only if its pipeline is limited); ``waited``:
        claim only runs due at least that many seconds ago."""
        freeing = self.overrides or ended is None or any(name in self.claimer.limited for name in ended)
        self.contended = []
        return queries.exchange(
            conn,
            worker_id=self.worker_id,
            successes=successes,
            transitions=transitions,
            limit=limit,
            claimer=self.claimer,
            overrides=self.overrides,
            pooled=self.pooled,
            freeing=freeing,
            contended=self.contended,
            waited=waited,
        )


def run_fields(run: ClaimedRun) -> dict[str, Any]:
    """The fields every log line about a run carries."""
    return {"run_id": run.id, "pipeline": run.pipeline, "attempt": run.attempt}
