"""Pipeline globs (app.globs): one dialect, matched in Python and translated to LIKE patterns."""

from __future__ import annotations

import pytest

from app import globs


@pytest.mark.parametrize(
    ("glob", "like"),
    [("*", "%"), ("reports.*", "reports.%"), ("a?c", "a_c"), ("under_score%", "under\\_score\\%")],
)
def test_globs_translate_to_like_patterns(glob: str, like: str) -> None:
    """``*`` and ``?`` become ``%`` and ``_``; LIKE's own wildcards are escaped."""
    assert globs.to_like(glob) == like


@pytest.mark.parametrize(
    ("glob", "name", "matched"),
    [
        ("*", "reports.daily", True),
        ("reports.*", "reports.daily", True),
        ("reports.*", "billing.daily", False),
        ("a?c", "abc", True),
        ("a?c", "abbc", False),
        ("under_score", "underXscore", False),
        ("100%", "100%", True),
        ("100%", "1000", False),
        ("Reports.*", "reports.daily", False),
    ],
)
def test_a_glob_matches_in_python_what_its_like_pattern_matches(glob: str, name: str, matched: bool) -> None:
    """Only ``*`` and ``?`` are wildcards, case counts: the filter means the same as in SQL."""
    assert globs.matches(glob, name) is matched


@pytest.mark.parametrize(
    "glob", ["", " reports.*", "reports.* ", "x" * (globs.MAX_LENGTH + 1), "[ab]*", "a]"]
)
def test_a_glob_orbit_cannot_match_is_refused_in_one_line(glob: str) -> None:
    """Empty, padded, too long, or with brackets: GlobError saying what is wrong."""
    with pytest.raises(globs.GlobError) as error:
        globs.to_like(glob)
    assert "\n" not in str(error.value)
    with pytest.raises(globs.GlobError):
        globs.matches(glob, "anything")


def test_the_longest_glob_is_accepted() -> None:
    """MAX_LENGTH characters exactly."""
    assert globs.check("x" * globs.MAX_LENGTH) == "x" * globs.MAX_LENGTH
