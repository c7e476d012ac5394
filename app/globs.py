"""Pipeline globs, one dialect everywhere: ``PIPELINE_FILTER``, ``--pipelines``, pauses, drains
and ``orbit runs --pipeline``.

``*`` matches any run of characters and ``?`` one character; nothing else is special (``[...]``
is refused: LIKE has no such thing, and a filter must mean the same in Python and in SQL).
"""

from __future__ import annotations

import fnmatch

MAX_LENGTH = 200


class GlobError(ValueError):
    """A glob Orbit cannot match; one line for the user."""


def check(glob: str) -> str:
    """``glob`` itself, or GlobError saying what is wrong with it."""
    if not glob or glob != glob.strip() or len(glob) > MAX_LENGTH:
        raise GlobError(
            f"bad glob {glob!r}: expected 1 to {MAX_LENGTH} characters without surrounding spaces"
        )
    if "[" in glob or "]" in glob:
        raise GlobError(f"bad glob {glob!r}: only * and ? are supported, not [...]")
    return glob


def to_like(glob: str) -> str:
    """The LIKE pattern matching what ``glob`` matches."""
    escaped = check(glob).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def matches(glob: str, name: str) -> bool:
    """Whether ``glob`` (checked) matches ``name``; with ``[`` refused, fnmatch's ``*`` and ``?``
    are LIKE's ``%`` and ``_``."""
    return fnmatch.fnmatchcase(name, check(glob))
