"""Running a worker inside the test process (burst mode) and reading what it did."""

from __future__ import annotations

import os
from typing import Any

from app.settings import Settings
from app.worker import build


def run_burst(settings: Settings) -> int:
    """Run a worker until nothing is runnable; returns its exit status."""
    return build(settings, burst=True).run()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state to tell.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def error_kinds(run: Any) -> list[str]:
    return [entry["kind"] for entry in run.errors]


def stderr_of(proc: Any) -> str:
    """What a worker started by the ``spawn_worker`` fixture wrote to stderr so far."""
    return str(proc.stderr_path.read_text())
