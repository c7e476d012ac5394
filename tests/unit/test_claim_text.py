"""The claims as sent: short enough for psycopg to keep their parsed placeholders (a longer one
is parsed again at every turn, about 50 µs), one line without comments."""

from __future__ import annotations

import pytest
from psycopg import _queries

from app.queries import claim


@pytest.mark.parametrize("name", ["_CLAIM", "_CLAIM_UNLIMITED"])
def test_a_claim_is_short_enough_for_psycopg_to_keep_its_parsing(name: str) -> None:
    statement = getattr(claim, name)
    assert len(statement) <= _queries.MAX_CACHED_STATEMENT_LENGTH, len(statement)
    assert "\n" not in statement and "--" not in statement
