"""JSON text from users (``orbit enqueue --params``, a file of params, the console's editor),
parsed without reaching the interpreter's recursion limit.

``json.loads`` of text nested a thousand deep recurses until a RecursionError, and whatever runs
that deep meanwhile (a finalizer the garbage collector calls, a warning) fails too, unreported.
Text nested deeper than MAX_DEPTH is refused before it is parsed; params given as objects (the
Python API, the HTTP API's body) are held to the same depth once encoded (app.enqueue), so a
run's params nest at most MAX_DEPTH deep whichever way it came.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 200
# A string, or what is left of the text after a quote never closed: every match succeeds, so a
# quote without its end is not tried again from each later quote (quadratic, minutes for 1 MB).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class TooDeep(RecursionError):
    """Raised for text nested deeper than MAX_DEPTH (a RecursionError, as ``json.loads`` raises)."""


def nesting(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def too_deep(text: str) -> bool:
    """Whether ``text`` nests arrays and objects deeper than MAX_DEPTH."""
    # Fewer opening brackets than the limit cannot nest past it: most text is not scanned.
    return text.count("[") + text.count("{") > MAX_DEPTH and nesting(text) > MAX_DEPTH


def loads(text: str) -> Any:
    """``json.loads``, or TooDeep for text nested deeper than MAX_DEPTH."""
    if too_deep(text):
        raise TooDeep(f"nested more than {MAX_DEPTH} deep")
    return json.loads(text)
