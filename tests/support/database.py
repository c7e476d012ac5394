"""Where the test database comes from: ORBIT_TEST_DATABASE_URL, else Docker, else embedded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def server_url(workdir: Path) -> Iterator[str]:
    """A Postgres server for this test session (URL of its maintenance database)."""
    given = os.environ.get("ORBIT_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    from app.embedded import embedded_url

    yield embedded_url(workdir)
