"""What the command line may override for one worker process."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Options:
    concurrency: int
    worker_id: str
    pipeline_filter: str
    burst: bool = False
