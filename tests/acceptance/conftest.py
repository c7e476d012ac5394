"""Every test of this tier has the session's database at hand (tests/support/fixtures.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _database(side_url: None) -> None:
    """The session's database migrated, and ORBIT_TEST_SIDE_URL set, before every test."""
