"""A small demo pipeline: three durable steps, used by ``make run``."""

from __future__ import annotations

from typing import Any

from app import Context, pipeline


@pipeline("demo.hello", max_attempts=3, timeout=60)
def hello(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Greet ``params["name"]`` in three checkpointed steps."""
    name = ctx.step("read", lambda: str(params.get("name", "world")))
    greeting = ctx.step("greet", lambda: f"Hello, {name}!")
    ctx.log.info("Demo pipeline greeted", greeting=greeting)
    return ctx.step("report", lambda: {"greeting": greeting, "attempt": ctx.attempt})
