"""The console's forms and pictures: the trigger form built from a params model's JSON Schema (and
the params read back from it), a run's timeline, and the hour's chart as SVG geometry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from app import jsontext
from app.serve.actions import ActionError

# Field types a form can hold; a model with anything else gets the JSON editor.
SIMPLE_TYPES = {"string", "integer", "number", "boolean"}
CHART_WIDTH, CHART_HEIGHT = 600, 120


class FormError(ActionError):
    """What was typed cannot be used; one line for the person."""


def fields(schema: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """The form's fields for a params model's schema; None when a JSON editor must do."""
    if not schema or schema.get("type") != "object":
        return None
    required = set(schema.get("required", ()))
    result = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = _simple(prop)
        if kind is None:
            return None
        result.append(
            {
                "name": name,
                "type": kind,
                "title": prop.get("title", name),
                "description": prop.get("description", ""),
                "required": name in required,
                "default": prop.get("default"),
                "choices": prop.get("enum"),
            }
        )
    return result


def _simple(prop: Mapping[str, Any]) -> str | None:
    if "enum" in prop:
        return "enum"
    kind = prop.get("type")
    if kind is None and "anyOf" in prop:  # Optional[X]: X or null
        kinds = [p.get("type") for p in prop["anyOf"]]
        others = [k for k in kinds if k != "null"]
        kind = others[0] if len(others) == 1 else None
    return kind if kind in SIMPLE_TYPES else None


def params_from(form: Mapping[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """The params a trigger form holds: its typed fields, else its JSON editor (``params``)."""
    typed = fields(schema)
    if typed is None or "params" in form:
        return json_object(str(form.get("params") or "{}"))
    params: dict[str, Any] = {}
    for field in typed:
        raw = str(form.get("p." + field["name"], "")).strip()
        if field["type"] == "boolean":
            params[field["name"]] = raw in ("on", "true", "1")
        elif raw:
            params[field["name"]] = _typed(field, raw)
    return params


def _typed(field: Mapping[str, Any], raw: str) -> Any:
    try:
        if field["type"] == "integer":
            return int(raw)
        if field["type"] == "number":
            return float(raw)
    except ValueError:
        raise FormError(f"{field['title']}: expected a {field['type']}, not {raw!r:.40}") from None
    return raw


def json_object(text: str) -> dict[str, Any]:
    try:
        value = jsontext.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FormError(f"params are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FormError(f"params must be a JSON object, not {type(value).__name__}")
    return value


def whole(value: Any, name: str) -> int:
    text = str(value or "0").strip() or "0"
    try:
        return int(text)
    except ValueError:
        raise FormError(f"{name} must be a whole number, not {text!r:.40}") from None


def timeline(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's steps as bars on its own time axis (from its first step or start to now or end)."""
    steps = [s for s in run.get("steps", []) if s.get("started_at")]
    if not steps:
        return []
    starts = [datetime.fromisoformat(s["started_at"]) for s in steps]
    ends = [datetime.fromisoformat(s["finished_at"]) if s.get("finished_at") else None for s in steps]
    origin = min(starts)
    last = max([e for e in ends if e is not None] + starts)
    span = max((last - origin).total_seconds(), 1e-3)
    bars = []
    for step, start, end in zip(steps, starts, ends, strict=True):
        # Every step stays visible: at least half a percent wide, and inside the track.
        left = min((start - origin).total_seconds() / span * 100, 99.5)
        width = max(min(((end or last) - start).total_seconds() / span * 100, 100 - left), 0.5)
        bars.append({**step, "left": round(left, 2), "width": round(width, 2)})
    return bars


def chart_bars(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars, one a minute: succeeded below, failed on top, scaled to the busiest minute."""
    peak = max([p["succeeded"] + p["failed"] for p in points] + [1])
    width = CHART_WIDTH / max(len(points), 1)
    bars = []
    for i, p in enumerate(points):
        ok = p["succeeded"] / peak * CHART_HEIGHT
        bad = p["failed"] / peak * CHART_HEIGHT
        x = round(i * width, 2)
        bars.append(
            {
                "x": x,
                "w": round(max(width - 1, 1), 2),
                "ok_y": round(CHART_HEIGHT - ok, 2),
                "ok_h": round(ok, 2),
                "bad_y": round(CHART_HEIGHT - ok - bad, 2),
                "bad_h": round(bad, 2),
                "label": f"{p['minute'][11:16]}: {p['succeeded']} succeeded, {p['failed']} failed",
            }
        )
    total = sum(p["succeeded"] + p["failed"] for p in points)
    failed = sum(p["failed"] for p in points)
    return {
        "bars": bars,
        "peak": peak,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "total": total,
        "failure_rate": 100 * failed / total if total else 0.0,
    }
