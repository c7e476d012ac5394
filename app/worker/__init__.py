"""The worker: claims runs, executes them in its executor pool, and records their outcomes.

``loop``       the loop and the wiring of the parts below (``Worker``)
``producer``   how many runs to claim, the claim, dispatch to executors, runs claimed ahead
``completer``  what happens when a run ends: outcomes recorded, written once, held, saved
``runlog``     the two lines logged about every run
``session``    the kept connection, each call's deadline, the backoff after a failed call
``duties``     the heartbeat, upkeep (rescue, retention, schedules) and the metrics report
``shutdown``   what a stop request does, and its deadlines
``observability``  ``/metrics`` and ``/health``, read from the HTTP thread
``exchange``   the turn with the database (outcomes and claim in one); ``options``: command-line overrides
``command``    ``python -m app.worker`` and ``orbit worker``
"""

from app.worker.command import add_arguments, build, main, start
from app.worker.loop import Worker
from app.worker.options import Options

__all__ = ["Options", "Worker", "add_arguments", "build", "main", "start"]
