"""What every tier shares, none of it a database: the test pipelines registered in this process,
and the database fixtures made available (tests/support/fixtures.py), started only when a test
asks for them.

The tiers: tests/unit (no database, no subprocess worker), tests/integration (a real PostgreSQL,
in-process), tests/acceptance (workers, the CLI, supervisord and installs as real processes) and
tests/reliability (the long scenarios of `make reliability`).
"""

from __future__ import annotations

import pytest

from tests.support import servers

# The session's fixtures are defined once here, not imported into each tier's conftest.py: a
# session-scoped fixture defined in three conftests would start three servers.
pytest_plugins = ["tests.support.fixtures"]

# The test pipelines must be registered in this process too (enqueue validates names).
import tests.support.pipelines  # noqa: E402,F401


def pytest_report_header(config: pytest.Config) -> str:
    try:
        kind = servers.chosen_kind()
    except servers.Unavailable as error:  # said again, as a usage error, if a test needs a server
        kind = str(error)
    return f"database server: {kind} ({servers.SERVER_ENV})"
