"""A pipeline module that an executor process imports only once a gate file exists
(``ORBIT_TEST_START_GATE``): a child still starting, for as long as a test needs. The worker
itself, which imports it too, is never held (it is not a spawned child)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from app import Context, pipeline

_gate = os.environ.get("ORBIT_TEST_START_GATE")
if _gate and multiprocessing.parent_process() is not None:
    deadline = time.monotonic() + 60
    while not Path(_gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


@pipeline("test.after_slow_start")
def after_slow_start(ctx: Context, params: dict[str, Any]) -> str:
    return "started"
