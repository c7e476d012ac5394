"""Executor processes: where pipeline code runs, under a hard time limit.

Choice: a pool of pre-started child processes, one run at a time each, talking to the worker over
a ``multiprocessing`` Pipe. A run past its limit has its child's whole process group killed with
SIGKILL and the child replaced, so code stuck in ``time.sleep``, a blocking socket or a C loop stops
for certain, and so do processes it spawned. A child that crashes (segfault, ``os._exit``, out of
memory) fails only the run it held. A fork per run (RQ) was measured at ~360 runs/s on 2 cores.
Measured by ``python -m bench``: a no-op run's round trip through this pool (pickle, pipe, child,
outcome back) costs 83-103 µs on a quiet 2-core machine, 140-160 µs on a loaded one; see
docs/performance.md.

Children are started with ``spawn`` (never ``fork``: the worker holds threads and connections),
sit in their own process group (so a signal to the worker's group, Ctrl-C or supervisord's
``stopasgroup``, does not reach them: the worker decides their fate on shutdown) and die with their
worker (``PR_SET_PDEATHSIG``); what their runs started dies with the worker too (app.reaper). Time
limits are enforced by a thread of the worker (see app.time_limits), so they hold while the
worker's loop waits on the database.

Only the child itself speaks on its pipe, and every outcome names its run and attempt: a process the
run forks loses the pipe at the fork and, should it come back into the child's code (it returned,
raised or called ``sys.exit``), ends there; the worker drops an outcome that is not its running
run's. Before, such a helper's ``SystemExit`` was recorded as the run's failure, and the run's own
result then as the next run's success.

``pool``   the worker's side: ExecutorPool
``child``  the child's side: child_main
"""

from app.executor.child import GROUP_SIGNALS, ChildConfig
from app.executor.pool import ExecutorError, ExecutorPool, Outcome

__all__ = ["GROUP_SIGNALS", "ChildConfig", "ExecutorError", "ExecutorPool", "Outcome"]
