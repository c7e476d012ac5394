"""Pipelines the benchmark runs (workers load them with ``ORBIT_PIPELINES=bench.pipelines``)."""

from __future__ import annotations

import time
from typing import Any

from app import Context, pipeline


@pipeline("bench.noop")
def noop(ctx: Context, params: dict[str, Any]) -> None:
    return None


@pipeline("bench.work10ms")
def work10ms(ctx: Context, params: dict[str, Any]) -> None:
    time.sleep(0.01)


@pipeline("bench.stamp")
def stamp(ctx: Context, params: dict[str, Any]) -> float:
    """When the pipeline started, on this host's clock (the benchmark runs its workers locally)."""
    return time.time()


@pipeline("bench.capped", concurrency=2)
def capped(ctx: Context, params: dict[str, Any]) -> None:
    """A pipeline held to 2 runs at once across the fleet, for the drain beside a limited backlog."""
    time.sleep(0.05)


@pipeline("bench.hang", timeout=0.2, max_attempts=1)
def hang(ctx: Context, params: dict[str, Any]) -> None:
    """Never returns in time: stopped at its 0.2 s limit, its executor killed and replaced."""
    time.sleep(3600)
