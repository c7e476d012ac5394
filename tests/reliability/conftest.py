"""Fixtures for the reliability suite: a private database server the tests may restart."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.database import make_engine, migrate
from app.embedded import embedded_url, restart
from tests.support import database as test_database


@dataclass
class PrivateServer:
    """An embedded PostgreSQL owned by one test module, with a migrated database on it."""

    url: str
    data_dir: Path

    def restart(self) -> None:
        restart(self.data_dir)

    def engine(self) -> Engine:
        return make_engine(self.url)


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """Always embedded, even with ORBIT_TEST_DATABASE_URL set: a shared server cannot be restarted."""
    data_dir = tmp_path_factory.mktemp("private-pg")
    with test_database.fresh_database(embedded_url(data_dir)) as url:
        migrate(url)
        yield PrivateServer(url, data_dir)


@pytest.fixture
def private_env(private_server: PrivateServer, worker_env: dict[str, str]) -> dict[str, str]:
    """Worker environment pointing at the private server."""
    return {**worker_env, "DATABASE_URL": private_server.url}
