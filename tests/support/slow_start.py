"""A pipeline module that the fork server cannot load for its executors (it opens a socket at
import, as a module that connects at import would), so each executor imports it itself; and in an
executor, the import waits for a gate file (``ORBIT_TEST_START_GATE``): an executor still
starting, for as long as a test needs. The worker and the fork server, which import it too, are
never held."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from app import Context, pipeline

_connection = socket.socket()  # what the fork server must not hand to its executors


def _in_executor() -> bool:
    try:
        return b"app.executor.forkserver" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return False


_gate = os.environ.get("ORBIT_TEST_START_GATE")
if _gate and _in_executor():
    deadline = time.monotonic() + 60
    while not Path(_gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


@pipeline("test.after_slow_start")
def after_slow_start(ctx: Context, params: dict[str, Any]) -> str:
    return "started"
