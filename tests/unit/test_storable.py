"""Text from pipeline code made storable: NUL and lone surrogates replaced visibly, nothing else."""

from __future__ import annotations

import json
import os

import pytest

from app.outcomes import Failure
from app.states import ErrorKind
from app.storable import storable, storable_json


def test_nul_and_lone_surrogates_become_the_replacement_character() -> None:
    """Each NUL and each lone surrogate (an undecodable file name) is one U+FFFD."""
    name = os.fsdecode(b"report-\xff.csv")
    assert storable(f"a\x00b {name}") == "a\ufffdb report-\ufffd.csv"
    assert storable("\ud83d\ude00") == "\ufffd\ufffd"


def test_storable_text_is_left_as_it_is() -> None:
    """Other text, control characters and characters beyond the BMP included, is unchanged."""
    text = "tab\there, line\nbreak, bell\x07, é, 😀, \ufffd"
    assert storable(text) == text


def test_a_failure_is_storable_whatever_its_error_said() -> None:
    """The type, message and traceback of a failure are storable as soon as it is built."""
    failure = Failure(ErrorKind.ERROR, "ValueError", "a\x00b", "Traceback: a\x00b\udcff")
    assert (failure.message, failure.traceback) == ("a\ufffdb", "Traceback: a\ufffdb\ufffd")
    assert failure.summary == "ValueError: a\ufffdb"
    json.dumps(failure.entry(1)).encode("utf-8")


def test_json_of_a_result_has_its_strings_made_storable_keys_included() -> None:
    """Strings deep in a value, keys too, are made storable; the rest encodes as usual."""
    value = {"a\x00b": [("x\udcff", 1)], "n": None, 2: 1.5}
    assert json.loads(storable_json(value)) == {"a\ufffdb": [["x\ufffd", 1]], "n": None, "2": 1.5}


@pytest.mark.parametrize("value", [float("nan"), {"x": object()}])
def test_what_no_replacement_fixes_is_still_refused(value: object) -> None:
    """NaN and values that are not JSON raise as before: the run fails with the reason."""
    with pytest.raises((TypeError, ValueError)):
        storable_json(value)
