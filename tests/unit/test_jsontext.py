"""Users' JSON text is parsed with a bound on nesting, before the interpreter's recursion limit."""

from __future__ import annotations

import json

import pytest

from app import jsontext


def test_nesting_counts_brackets_outside_strings_only() -> None:
    assert jsontext.nesting('{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert jsontext.nesting('["\\"[[[", []]') == 2
    assert jsontext.nesting("5") == 0


def test_text_nested_past_the_limit_is_refused_before_it_is_parsed() -> None:
    limit = jsontext.MAX_DEPTH
    assert jsontext.loads("[" * limit + "]" * limit) is not None
    with pytest.raises(RecursionError, match=f"nested more than {limit} deep"):
        jsontext.loads("[" * (limit + 1) + "]" * (limit + 1))
    with pytest.raises(RecursionError):
        jsontext.loads("[" * 100_000)  # not even valid: refused all the same, without recursing
    # Many brackets, shallow: parsed.
    assert len(jsontext.loads("[" + ",".join(["[]"] * 5000) + "]")) == 5000
    assert jsontext.loads('{"s": "' + "[" * 1000 + '"}') == {"s": "[" * 1000}


def test_a_quote_never_closed_is_invalid_json_not_too_deep() -> None:
    """What follows a quote that never closes is inside the string: its brackets do not count."""
    text = '"' + '\\"' * 1000 + "[" * 300
    assert jsontext.nesting(text) == 0
    with pytest.raises(json.JSONDecodeError, match="Unterminated string"):
        jsontext.loads(text)
