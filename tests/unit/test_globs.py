"""Pipeline globs (app.globs): one dialect, translated to LIKE patterns."""

from __future__ import annotations

import pytest

from app import globs


@pytest.mark.parametrize(
    ("glob", "like"),
    [("*", "%"), ("reports.*", "reports.%"), ("a?c", "a_c"), ("under_score%", "under\\_score\\%")],
)
def test_globs_translate_to_like_patterns(glob: str, like: str) -> None:
    assert globs.to_like(glob) == like
