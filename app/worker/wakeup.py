"""Which worker takes a new run first.

Every worker LISTENs for new runs. A single new run announced to every idle worker was claimed by
one of them while the others made a claim that found nothing, and on a small machine that race
slowed the winner: a pickup's p99 was 12-13 ms with two workers, 5.5-6.2 ms with one. So the
notification of an insert names its first run's id, how many runs it inserted and, when they are
all of one pipeline, which (migration 0010), and for a single run each worker serving that
pipeline works out the same one of them: the run's id modulo their number, in the order of their
ids (the live workers, read at every heartbeat). That one claims at once and the others stay
asleep; when it has no executor free, or is stopping, it passes the run on to all of them.

Several runs at once, a notification that says nothing of them (room freed under a flow-control
limit, a trigger older than 0010) or one passed on wake every worker that serves them. A worker
that died without its peers knowing yet (killed, up to two heartbeats) leaves the runs it was
chosen for to the others, which look for runs left waiting that long
(app.worker.producer.LEFT_WAITING, 250 ms) or find them on their next poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

PASSED_ON = "*"  # the prefix of a notification a chosen worker passes on to all


class Decision(Enum):
    NOW = "now"  # claim at once
    CHOSEN = "chosen"  # claim at once if there is room, else pass it on
    NOT_MINE = "not mine"  # another worker takes it


@dataclass
class Wakeup:
    me: str
    pipelines: frozenset[str]
    peers: dict[str, list[str]] = field(default_factory=dict)  # pipeline: live workers serving it

    def update(self, workers: Iterable[tuple[str, list[str]]]) -> None:
        """The live workers and the pipelines each serves (this one included or not)."""
        peers: dict[str, list[str]] = {}
        for worker_id, served in workers:
            for pipeline in served:
                peers.setdefault(pipeline, []).append(worker_id)
        self.peers = {pipeline: sorted(ids) for pipeline, ids in peers.items()}

    def decide(self, payload: str) -> Decision:
        """What a notification's ``payload`` means for this worker."""
        first, count, pipeline = _parse(payload)
        if pipeline and pipeline not in self.pipelines:
            return Decision.NOT_MINE
        if first is None or count != 1 or not pipeline:
            return Decision.NOW
        serving = self.peers.get(pipeline, [])
        if self.me not in serving:
            serving = sorted([*serving, self.me])
        return Decision.CHOSEN if serving[first % len(serving)] == self.me else Decision.NOT_MINE


def _parse(payload: str) -> tuple[int | None, int, str]:
    """(first id, count, pipeline) of ``first count pipeline``; (None, 0, "") when it says no
    more, or was passed on."""
    parts = payload.split(" ", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None, 0, parts[2] if len(parts) == 3 and parts[0] == PASSED_ON else ""
    return int(parts[0]), int(parts[1]), parts[2]


def passed_on(payload: str) -> str:
    """The notification by which a chosen worker without room hands a run to every worker."""
    first, count, pipeline = _parse(payload)
    return f"{PASSED_ON} {count} {pipeline}" if first is not None else payload
