"""Orbit: a PostgreSQL-backed pipeline-run queue and worker.

The public surface is what ``__all__`` lists; everything else may change.
"""

__version__ = "0.1.0"

from app.context import Context
from app.enqueue import EnqueueError, enqueue, enqueue_many
from app.errors import FailNow, LeaseLost, Snooze, StepError
from app.registry import pipeline
from app.states import RunStatus

__all__ = [
    "Context",
    "EnqueueError",
    "FailNow",
    "LeaseLost",
    "RunStatus",
    "Snooze",
    "StepError",
    "__version__",
    "enqueue",
    "enqueue_many",
    "pipeline",
]
