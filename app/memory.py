"""What a worker's processes use: the worker, its fork server and each executor.

Read from ``/proc/PID/smaps_rollup`` by the heartbeat once a minute (1-2 ms for a worker's
processes, that the loop spends outside a pickup only once in a while): the resident size
(RSS, what ``ps`` and process managers such as PM2 show, and what a run's memory limit is checked
against) and the proportional set size (PSS: each shared page divided among the processes that
share it, so that the figures of a worker's processes add up to what they use together; executors
forked from the fork server share most of their pages with it). Shown by the metrics report,
``/metrics`` (``orbit_process_memory_bytes``) and ``orbit workers``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.sizes import format_size


@dataclass(frozen=True)
class Usage:
    """One process: its pid, resident size and proportional set size, in bytes."""

    pid: int
    rss: int
    pss: int


def usage(pid: int) -> Usage | None:
    """The memory of ``pid`` (None when it is gone or cannot be read)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    sizes = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            sizes[name] = int(rest.split()[0]) * 1024
    return Usage(pid, sizes.get("Rss", 0), sizes.get("Pss", 0))


@dataclass(frozen=True)
class Snapshot:
    """A worker's processes at one moment."""

    worker: Usage | None = None
    server: Usage | None = None
    executors: list[Usage | None] = field(default_factory=list)

    @classmethod
    def of(cls, worker: int, executors: list[int], server: int | None) -> Snapshot:
        return cls(usage(worker), usage(server) if server else None, [usage(pid) for pid in executors])

    def processes(self) -> list[tuple[str, Usage]]:
        """(name, usage) of each process read: ``worker``, ``forkserver``, ``executor-N``."""
        named = [("worker", self.worker), ("forkserver", self.server)]
        named += [(f"executor-{n}", u) for n, u in enumerate(self.executors)]
        return [(name, u) for name, u in named if u is not None]

    @property
    def total(self) -> int:
        """The PSS of all of them: what they use together."""
        return sum(u.pss for _, u in self.processes())

    def describe(self) -> str:
        """``138 MB (worker 68 MB, fork server 16 MB, executors 12 MB each)``, by PSS."""
        if self.worker is None:
            return "n/a"
        parts = [f"worker {format_size(self.worker.pss)}"]
        if self.server is not None:
            parts.append(f"fork server {format_size(self.server.pss)}")
        each = [format_size(u.pss) for u in self.executors if u is not None]
        if each:
            parts.append(
                f"executors {each[0]} each" if len(set(each)) == 1 else f"executors {'/'.join(each)}"
            )
        return f"{format_size(self.total)} ({', '.join(parts)})"

    def as_json(self) -> str:
        """For ``workers.memory``: bytes by process, and the total."""
        document: dict[str, Any] = {"total_pss": self.total}
        for name, u in self.processes():
            document[name] = {"pid": u.pid, "rss": u.rss, "pss": u.pss}
        return json.dumps(document)


def summary(document: dict[str, Any] | None) -> str:
    """``138 MB (executors 12 MB each)``, from a ``workers.memory`` document: all the worker's
    processes together, and its executors (PSS; ``-`` before the first heartbeat that wrote it)."""
    if not document:
        return "-"
    executors = [value["pss"] for name, value in document.items() if name.startswith("executor-")]
    total = format_size(document["total_pss"])
    if not executors:
        return total
    shown = {format_size(pss) for pss in executors}
    each = f"{shown.pop()} each" if len(shown) == 1 else "/".join(format_size(pss) for pss in executors)
    return f"{total} (executors {each})"
