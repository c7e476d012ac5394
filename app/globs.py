"""Pipeline globs: ``*`` matches any run of characters, ``?`` one character.

Globs matched in SQL (pauses, drains, ``orbit runs --pipeline``) take nothing else: LIKE has no
``[...]``, so it is refused rather than matched literally. A worker's ``PIPELINE_FILTER`` (and
``--pipelines``) is matched in Python only, and also takes ``[...]`` (``test.[nf]*``).
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
    if "\x00" in glob:
        raise GlobError(f"bad glob {glob!r}: it cannot hold a NUL character")
    return glob


def to_like(glob: str) -> str:
    """The LIKE pattern matching what ``glob`` matches."""
    return escape_like(check(glob)).replace("*", "%").replace("?", "_")


def escape_like(text: str) -> str:
    """``text`` as a LIKE pattern that matches it literally (LIKE's default escape, backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def check_filter(glob: str) -> str:
    """A worker's pipeline filter, or ValueError: a glob that may also hold ``[...]``."""
    if not glob or glob != glob.strip() or glob.count("[") != glob.count("]"):
        raise ValueError("a glob such as analytics-* or *")
    return glob


def matches_filter(glob: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, glob)


def matches(glob: str, name: str) -> bool:
    """Whether ``glob`` (checked) matches ``name``; with ``[`` refused, fnmatch's ``*`` and ``?``
    are LIKE's ``%`` and ``_``."""
    return fnmatch.fnmatchcase(name, check(glob))
