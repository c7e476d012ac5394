"""Executor processes: where pipeline code runs, under a hard time limit and, when set, a memory limit.

Choice: a pool of executor processes per worker, forked from a fork server that has Orbit and the
pipelines loaded (a fresh interpreter started for that, never the worker itself: the worker holds
threads and connections a child must not inherit). An executor takes about a millisecond to fork
and shares the server's memory until it writes to it. A run past its limit has its executor's
whole process group killed with SIGKILL and the executor replaced, so code stuck in
``time.sleep``, a blocking socket or a C loop stops for certain, and so do processes it spawned. An
executor that crashes (segfault, ``os._exit``, out of memory) fails only the run it held. A fork
per run (RQ) was measured at ~360 runs/s on 2 cores.

The worker hands each executor its runs in batches when runs are short, and each executor sends
every outcome the moment its run ends, on a socket read many messages at a time (``wire``): what
a run costs in messages and process wake-ups is shared by the runs of a batch. Limits are enforced
by a thread of the worker that reads a board in shared memory (``watchdog``), so they hold while
the worker's loop waits on the database. Executors sit in their own process group (so a signal to
the worker's group, Ctrl-C or supervisord's ``stopasgroup``, does not reach them: the worker
decides their fate on shutdown) and die with their fork server, which dies with its worker; what
their runs started dies with the worker too (app.reaper).

Only the executor itself speaks on its socket, and every outcome names its run and attempt: a
process the run forks loses the socket at the fork and, should it come back into the executor's
code (it returned, raised or called ``sys.exit``), ends there; the worker drops an outcome that is
not its running run's.

``pool``        the worker's side: ExecutorPool
``forkserver``  the process executors are forked from
``child``       the executor's side: child_main
``watchdog``    the board in shared memory and the thread that enforces the limits
``wire``        the messages between worker and executors
"""

from app.executor.child import ChildConfig
from app.executor.pool import ExecutorError, ExecutorPool, Outcome

__all__ = ["ChildConfig", "ExecutorError", "ExecutorPool", "Outcome"]
