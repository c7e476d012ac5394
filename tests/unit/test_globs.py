"""Pipeline globs (app.globs): matched in Python and translated to LIKE patterns; a worker's filter
also takes [...]."""

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


@pytest.mark.parametrize(
    ("glob", "name", "matched"),
    [
        ("test.[nf]*", "test.noop", True),
        ("test.[nf]*", "test.fail", True),
        ("test.[nf]*", "test.echo", False),
    ],
)
def test_a_workers_filter_also_takes_brackets(glob: str, name: str, matched: bool) -> None:
    """PIPELINE_FILTER is matched in Python only: ``[...]`` is a set of characters there."""
    assert globs.matches_filter(globs.check_filter(glob), name) is matched


@pytest.mark.parametrize("glob", ["", " x*", "test.[nf*"])
def test_a_filter_that_is_no_glob_is_refused(glob: str) -> None:
    """Empty, padded, or with an unclosed bracket: ValueError (a bad setting, exit 2)."""
    with pytest.raises(ValueError, match="a glob such as"):
        globs.check_filter(glob)


def test_a_nul_character_is_refused() -> None:
    with pytest.raises(globs.GlobError, match="NUL"):
        globs.to_like("a\x00b")
