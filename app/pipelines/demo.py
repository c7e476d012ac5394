"""Demo pipelines, used by ``make run``: durable steps, and params typed by a model (the console
builds its trigger form from the model)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from app import Context, pipeline


@pipeline("demo.hello", max_attempts=3, timeout=60)
def hello(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Greet ``params["name"]`` in three checkpointed steps."""
    name = ctx.step("read", lambda: str(params.get("name", "world")))
    greeting = ctx.step("greet", lambda: f"Hello, {name}!")
    ctx.log.info("Demo pipeline greeted", greeting=greeting)
    return ctx.step("report", lambda: {"greeting": greeting, "attempt": ctx.attempt})


class ReportParams(BaseModel):
    """What the demo report is about."""

    customer: str = Field(min_length=1, max_length=100, description="who the report is for")
    days: int = Field(default=7, ge=1, le=366, description="how many days back")
    format: Literal["csv", "pdf"] = "csv"
    fail: bool = Field(default=False, description="fail at the last step, to see a failure")


@pipeline("demo.report", max_attempts=2, timeout=60, params=ReportParams)
def report(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Gather, render and deliver a report in three steps of a fraction of a second each."""
    rows = ctx.step("gather", lambda: _slowly(params["days"] * 10))
    size = ctx.step("render", lambda: _slowly(rows * 3))
    if params["fail"]:
        raise RuntimeError(f"delivery to {params['customer']} refused (the demo was asked to fail)")
    return ctx.step(
        "deliver", lambda: {"customer": params["customer"], "format": params["format"], "bytes": size}
    )


def _slowly(value: int) -> int:
    time.sleep(0.2)
    return value
