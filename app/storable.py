"""Text from pipeline code made storable: PostgreSQL's text and jsonb hold no NUL character and
no lone surrogate, and Python strings may carry both.

Errors, tracebacks, results and step outputs come from user code: a NUL read from a binary file,
a file name that ``os.fsdecode`` could not decode (it becomes a lone surrogate). The database
refuses such text, and with it the whole batch of outcomes written alongside. Each such character
is replaced by U+FFFD, the replacement character, so that something visibly stood there.
"""

from __future__ import annotations

import re
from typing import Any

from app.queries import to_json

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_json(value: Any) -> str:
    """JSON text of a value returned by pipeline code, its strings (keys too) made storable.

    Raises as :func:`app.queries.to_json` does for what no replacement fixes: a value JSON cannot
    hold (TypeError, NaN), one that contains itself or is too deep (RecursionError).
    """
    try:
        return to_json(value)
    except ValueError:
        # Rare, so the common case pays for one encoding only; a NaN raises again here.
        return to_json(_storable_value(value))


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {_storable_value(key): _storable_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_value(item) for item in value]
    return value
