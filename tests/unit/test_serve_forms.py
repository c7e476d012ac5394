"""The console's forms and pictures: fields from a params model, params read back, the timeline
and the chart."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from app.serve.forms import FormError, chart_bars, fields, json_object, params_from, timeline, whole


class Params(BaseModel):
    customer: str = Field(description="who")
    days: int = 7
    ratio: float | None = None
    format: Literal["csv", "pdf"] = "csv"
    dry: bool = False


class Nested(BaseModel):
    items: list[int]


def test_a_model_of_simple_fields_becomes_a_form() -> None:
    """Each field keeps its type, whether it is required, its default, choices and description."""
    form = {f["name"]: f for f in fields(Params.model_json_schema()) or []}
    assert form["customer"]["required"] and form["customer"]["description"] == "who"
    assert (form["days"]["type"], form["days"]["default"]) == ("integer", 7)
    assert form["ratio"]["type"] == "number"
    assert form["format"]["choices"] == ["csv", "pdf"]
    assert form["dry"]["type"] == "boolean"


def test_a_model_with_structured_fields_gets_the_json_editor() -> None:
    """A list or nested field has no form input: the JSON editor is used instead."""
    assert fields(Nested.model_json_schema()) is None
    assert fields(None) is None


def test_params_are_read_back_with_their_types() -> None:
    """Numbers become numbers, a checkbox a boolean, an empty optional field is left out."""
    schema = Params.model_json_schema()
    form = {"p.customer": "acme", "p.days": "30", "p.ratio": "", "p.format": "pdf", "p.dry": "on"}
    assert params_from(form, schema) == {"customer": "acme", "days": 30, "format": "pdf", "dry": True}
    with pytest.raises(FormError, match="Days: expected a integer"):
        params_from({"p.customer": "a", "p.days": "many"}, schema)


def test_the_json_editor_takes_a_json_object_only() -> None:
    """Without a model, params come from the editor; what is not a JSON object is one line."""
    assert params_from({"params": '{"a": [1]}'}, None) == {"a": [1]}
    for text, says in (
        ("[1]", "JSON object"),
        ("{nope", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ):
        with pytest.raises(FormError, match=says):
            json_object(text)
    assert whole(" 5 ", "priority") == 5
    with pytest.raises(FormError, match="priority must be a whole number"):
        whole("1.5", "priority")


def test_the_timeline_places_steps_on_the_runs_own_time_axis() -> None:
    """The first step starts at 0 %, the last ends at 100 %; a step not yet finished is still shown."""
    run = {
        "steps": [
            {
                "name": "a",
                "started_at": "2026-01-01T00:00:00+00:00",
                "finished_at": "2026-01-01T00:00:01+00:00",
            },
            {
                "name": "b",
                "started_at": "2026-01-01T00:00:01+00:00",
                "finished_at": "2026-01-01T00:00:04+00:00",
            },
            {"name": "c", "started_at": "2026-01-01T00:00:04+00:00", "finished_at": None},
        ]
    }
    bars = timeline(run)
    assert [(b["left"], b["width"]) for b in bars[:2]] == [(0.0, 25.0), (25.0, 75.0)]
    assert bars[2]["left"] == 99.5 and bars[2]["width"] == 0.5
    assert timeline({"steps": []}) == []


def test_the_chart_scales_to_the_busiest_minute() -> None:
    """Bars stack failed on succeeded; the busiest minute fills the height; totals and rate are given."""
    points = [
        {"minute": "2026-01-01T00:00:00+00:00", "succeeded": 3, "failed": 1},
        {"minute": "2026-01-01T00:01:00+00:00", "succeeded": 0, "failed": 0},
    ]
    chart = chart_bars(points)
    first, empty = chart["bars"]
    assert first["ok_h"] + first["bad_h"] == chart["height"]
    assert empty["ok_h"] == empty["bad_h"] == 0
    assert (chart["total"], chart["failure_rate"]) == (4, 25.0)
    assert first["label"] == "00:00: 3 succeeded, 1 failed"
