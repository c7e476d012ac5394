"""Fixtures for the reliability suite: the session's database before every test, and a private
database server the tests may restart."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine

from app.database import make_engine, migrate
from tests.support import servers
from tests.support.servers import TestServer


@pytest.fixture(autouse=True)
def _database(side_url: None) -> None:
    """The session's database migrated, and ORBIT_TEST_SIDE_URL set, before every test."""


@dataclass
class PrivateServer:
    """A server owned by one test module, which it may restart, with a migrated database on it.

    ``url`` is what Orbit is given (through PgBouncer under ``pgbouncer``), ``direct_url`` the
    same database without a pooler."""

    url: str
    direct_url: str
    server: TestServer

    def restart(self) -> None:
        self.server.restart()

    def engine(self) -> Engine:
        return make_engine(self.url)

    def env(self) -> dict[str, str]:
        """DATABASE_URL, and DIRECT_URL when it differs."""
        if self.direct_url == self.url:
            return {"DATABASE_URL": self.url}
        return {"DATABASE_URL": self.url, "DIRECT_URL": self.direct_url}


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """A second server of the session's kind (a shared server cannot be restarted); the embedded
    one when the session's is a given URL or a container."""
    kind = servers.private_kind(servers.chosen_kind())
    with (
        servers.started(kind, tmp_path_factory.mktemp("private-pg")) as private,
        private.scratch_database() as database,
    ):
        migrate(database.direct_url)
        yield PrivateServer(database.url, database.direct_url, private)


@pytest.fixture
def private_env(private_server: PrivateServer, worker_env: dict[str, str]) -> dict[str, str]:
    """Worker environment pointing at the private server."""
    env = {k: v for k, v in worker_env.items() if k != "DIRECT_URL"}
    return {**env, **private_server.env()}


# --- figures -------------------------------------------------------------------------------------
# Each scenario reports what it measured (runs lost, executed twice, time to recover); the table is
# printed at the end of the session, so `make reliability` ends with the figures.

FULL_SIZE = os.environ.get("ORBIT_RELIABILITY_FULL") == "1"
_figures: list[dict[str, Any]] = []


def size(short: int, full: int) -> int:
    """The scenario's size: short under `make test`, full under `make reliability`."""
    return full if FULL_SIZE else short


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    def report(**values: Any) -> None:
        _figures.append({"scenario": request.node.name.removeprefix("test_"), **values})

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _figures:
        return
    terminalreporter.section("reliability figures" + (" (full size)" if FULL_SIZE else " (short)"))
    for row in _figures:
        scenario = row.pop("scenario")
        terminalreporter.write_line(f"{scenario}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
